"""`edgerun power`: which power meters this machine has, and a live reading from each."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgerun.cli.options import echo_json, json_option


def render(rows: list[dict[str, Any]]) -> list[str]:
    """One line per meter: its reading and label, or why it is unavailable and how to enable it."""
    lines = []
    for row in rows:
        if row["available"]:
            bound = ", lower bound" if row.get("lower_bound") else ""
            lines.append(
                f"{row['meter']:8} {row['watts']:8.2f} W  {row['source']} "
                f"[scope {row['scope']}, {row['method']}{bound}]"
            )
        else:
            hint = f" ({row['hint']})" if row.get("hint") else ""
            lines.append(f"{row['meter']:8} unavailable: {row['reason']}{hint}")
    if not any(r["available"] for r in rows):
        lines.append(
            "No power meter here: `edgerun bench` will record energy as null with these reasons "
            '(--power cmd:"..." reads an external meter; --assume-watts W gives a labelled estimate).'
        )
    return lines


@click.command()
@click.option(
    "--seconds", default=0.5, show_default=True, help="Window for a reading from energy counters."
)
@click.option("--cmd", "commands", multiple=True, help="Also try an external meter command.")
@click.option("--root", type=click.Path(path_type=Path), default=Path("/"), hidden=True)
@json_option
def power(seconds: float, commands: tuple[str, ...], root: Path, as_json: bool) -> None:
    """List the power meters found on this machine and take a live reading from each."""
    from edgerun.power import survey

    rows = survey(root, seconds, commands=list(commands))
    if as_json:
        echo_json(rows)
    else:
        click.echo("\n".join(render(rows)))
