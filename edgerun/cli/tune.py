"""`edgerun tune ARTIFACT|EXPORT_DIR`: search this machine's fastest faithful settings and write
them into a user profile."""

from __future__ import annotations

import re
from pathlib import Path

import click

from edgerun.cli.options import echo_json, json_option, objective_option
from edgerun.core.errors import EdgerunError

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}


def parse_budget(text: str) -> float:
    """'10m' / '90s' / '1h' / '600' -> seconds; anything else is a one-line error."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text.lower())
    if not match or float(match.group(1)) <= 0:
        raise EdgerunError(f"cannot read the budget '{text}'", "use e.g. --budget 10m, 90s or 1h")
    return float(match.group(1)) * _UNITS[match.group(2)]


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--profile", help="Base device profile id or TOML path (default: detected).")
@click.option("--budget", default="10m", show_default=True, help="Wall-clock limit: 90s, 10m, 1h.")
@objective_option
@click.option(
    "--power",
    "power_spec",
    default="auto",
    show_default=True,
    help='The meter of --objective energy: auto, a meter name or cmd:"COMMAND" (see edgerun power).',
)
@click.option("--prompt-tokens", default=64, show_default=True, help="Prompt length per trial rep.")
@click.option("--gen-tokens", default=64, show_default=True, help="Tokens generated per trial rep.")
@click.option("--dry-run", is_flag=True, help="Search and report, but write no profile.")
@json_option
def tune(
    path: Path,
    profile: str | None,
    budget: str,
    objective: str,
    power_spec: str,
    prompt_tokens: int,
    gen_tokens: int,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Search threads, CPU affinity, artifact, backend and backend options on this machine,
    each trial measured by the bench engine; settings that can change outputs (MatMulNBits
    accuracy level, flash attention, KV cache type, another artifact) must first pass an
    on-device KL check against the artifact's shipped reference. The winner is written as the user profile tuned-<profile>,
    which run, serve, bench and edgerun.load then use on this machine without flags."""
    from rich.console import Console

    import edgerun.tune
    from edgerun.tune.result import describe_config, measured_line

    console = Console(stderr=True)
    result = edgerun.tune.tune(
        path,
        profile,
        budget_s=parse_budget(budget),
        objective=objective,
        power=power_spec,
        prompt_tokens=prompt_tokens,
        gen_tokens=gen_tokens,
        write=not dry_run,
        progress=lambda msg: console.print(f"[dim]{msg}[/dim]", highlight=False),
    )
    if as_json:
        echo_json({"profile": str(result.profile_path) if result.profile_path else None,
                   "profile_id": result.profile_id, **result.provenance})  # fmt: skip
        return
    out = result.outcome
    click.echo(f"default: {describe_config(out.default)}: {measured_line(out.default, objective)}")
    click.echo(f"winner:  {describe_config(out.winner)}: {measured_line(out.winner, objective)}")
    click.echo(
        f"{out.trials} trials, {len(out.measured)} configurations of"
        f" {result.provenance['space']['exhaustive_configs']}, {len(out.refused)} refused for"
        f" fidelity, {out.seconds:.0f} s ({out.stopped})"
    )
    for refused in out.refused:
        click.echo(f"refused: {refused['arm']} {refused['config']}: {refused['reason']}")
    for pruned in out.pruned:
        what = f"{pruned['arm']} {pruned['dim']}" if "dim" in pruned else pruned["arm"]
        click.echo(f"not searched: {what}: {pruned['reason']}")
    if result.profile_path:
        click.echo(f"wrote {result.profile_path} (`edgerun profiles show {result.profile_id}`)")
