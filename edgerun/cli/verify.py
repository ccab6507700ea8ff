"""`edgerun verify ARTIFACT`."""

from __future__ import annotations

from pathlib import Path

import click

from edgerun.cli.options import echo_json, json_option
from edgerun.errors import EdgerunError


class VerifyFailed(EdgerunError):
    """Files of an artifact differ from its manifest (exit 1)."""

    exit_code = 1


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@json_option
def verify(artifact: Path, as_json: bool) -> None:
    """Re-hash every file of ARTIFACT and compare with its manifest (edgerun.json).

    Prints what changed, went missing or appeared; exits 1 if anything did.
    """
    from edgerun.manifest import verify as verify_artifact

    report = verify_artifact(artifact)
    if as_json:
        echo_json(
            {
                "artifact": str(artifact),
                "passed": report.passed,
                "ok": report.ok,
                "changed": report.changed,
                "missing": report.missing,
                "extra": report.extra,
            }
        )
    else:
        for label, names in (
            ("changed", report.changed),
            ("missing", report.missing),
            ("extra", report.extra),
        ):
            for name in names:
                click.echo(f"{label}: {name}")
        if report.passed:
            click.echo(f"ok: {len(report.ok)} files match {artifact}/edgerun.json")
    if not report.passed:
        n = len(report.changed) + len(report.missing) + len(report.extra)
        raise VerifyFailed(
            f"{artifact} differs from its manifest in {n} file(s)",
            "re-export it, or restore the files",
        )
