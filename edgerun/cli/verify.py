"""`edgerun verify ARTIFACT [--fidelity]`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgerun.cli.options import echo_json, json_option
from edgerun.core.errors import EdgerunError


class VerifyFailed(EdgerunError):
    """Files of an artifact differ from its manifest, or its fidelity on this device is worse
    than the manifest's bound (exit 1)."""

    exit_code = 1


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option(
    "--fidelity",
    is_flag=True,
    help="Also score the artifact on this device against the reference it ships with"
    " (KL, top-1, PPL ratio beside the export's); exit 1 when worse than its bound.",
)
@click.option(
    "--profile",
    envvar="EDGERUN_PROFILE",
    help="Device profile id or TOML file for --fidelity (default: auto-detect).",
)
@click.option("--threads", type=int, default=None, help="CPU threads for --fidelity.")
@json_option
def verify(
    artifact: Path, fidelity: bool, profile: str | None, threads: int | None, as_json: bool
) -> None:
    """Re-hash every file of ARTIFACT and compare with its manifest (edgerun.json).

    Prints what changed, went missing or appeared; exits 1 if anything did. With --fidelity,
    then runs the artifact here as users run it and scores it against its shipped reference.
    """
    from edgerun.core.manifest import verify as verify_artifact

    report = verify_artifact(artifact)
    data: dict[str, Any] = {
        "artifact": str(artifact),
        "passed": report.passed,
        "ok": report.ok,
        "changed": report.changed,
        "missing": report.missing,
        "extra": report.extra,
    }
    if not as_json:
        for label in ("changed", "missing", "extra"):
            for name in data[label]:
                click.echo(f"{label}: {name}")
        if report.passed:
            click.echo(f"ok: {len(report.ok)} files match {artifact}/edgerun.json")
    if not report.passed:
        if as_json:
            echo_json(data)
        n = len(report.changed) + len(report.missing) + len(report.extra)
        raise VerifyFailed(
            f"{artifact} differs from its manifest in {n} file(s)",
            "re-export it, or restore the files",
        )
    if fidelity:
        from edgerun.exporters.fidelity_check import verify_fidelity

        data["fidelity"] = verify_fidelity(artifact, profile, threads)
        data["passed"] = data["fidelity"]["passed"]
        if not as_json:
            _print_fidelity(data["fidelity"])
    if as_json:
        echo_json(data)
    if fidelity and not data["passed"]:
        result = data["fidelity"]
        raise VerifyFailed(
            f"{artifact} on this device: {'; '.join(result['reasons'])}"
            f" (export: {_numbers(result['export'])})",
            "this device's kernels compute it worse than where it was exported: try another"
            " backend or accuracy level, or export another format for it",
        )


def _numbers(metrics: dict[str, Any] | None) -> str:
    if not metrics:
        return "not recorded"
    return (
        f"mean KL {metrics['mean_kl']:.4g}, top-1 {metrics['top1_agreement']:.3f},"
        f" PPL ratio {metrics['ppl_ratio']:.4g}"
    )


def _print_fidelity(result: dict[str, Any]) -> None:
    """The device's numbers beside the export's and the bound, one line each."""
    device, export, bound = result["device"], result["export"], result["bound"]
    click.echo(
        f"fidelity on this device ({device['machine']['arch']}, {device['machine']['cpu']};"
        f" {device['backend']} [{', '.join(device['providers'])}], profile {device['profile']}),"
        f" {device['tokens']} scored tokens:"
    )
    click.echo(f"  device: {_numbers(device)}")
    where = (export or {}).get("machine") or {}
    click.echo(f"  export: {_numbers(export)} ({where.get('arch', '?')}, {where.get('cpu', '?')})")
    top1 = {
        "all": f"top-1 >= {bound['min_top1_agreement']:.3f}",
        "confident": f"top-1 (confident positions) >= {bound['min_top1_agreement']:.3f}",
    }.get(result["top1_gated"], "top-1 not gated (a flat reference)")
    click.echo(
        f"  bound:  mean KL <= {bound['max_mean_kl']:.4g}, {top1},"
        f" PPL ratio <= {bound['max_ppl_ratio']:.4g}"
    )
    if result["passed"]:
        click.echo("ok: within the manifest's bound")
