"""`edgerun info PATH`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgerun.cli.options import echo_json, json_option


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _num(value: Any, spec: str) -> str:
    """A recorded number, or n/a when the manifest holds null there."""
    return "n/a" if value is None else format(value, spec)


def _render(desc: dict[str, Any]) -> list[str]:
    skip = {"files", "kind", "validation", "source"}
    lines = [f"{desc['kind']}: {desc['path']}"]
    for key, value in desc.items():
        if key in skip or key == "path" or value is None:
            continue
        if key == "parameters":
            value = f"{value:,}"
        elif key == "total_bytes":
            key, value = "size", human_bytes(value)
        lines.append(f"  {key.replace('_', ' ')}: {value}")
    if desc.get("validation"):
        v = desc["validation"]
        lines.append(
            "  validation: "
            + ("passed" if v.get("passed") else "FAILED")
            + f" (ppl ratio {_num(v.get('ppl_ratio'), '.3f')}, mean KL"
            f" {_num(v.get('mean_kl'), '.4f')}, top-1 {_num(v.get('top1_agreement'), '.3f')})"
        )
    lines.append("  files:")
    lines += [f"    {f['name']}  {human_bytes(f['bytes'])}" for f in desc["files"]]
    return lines


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@json_option
def info(path: Path, as_json: bool) -> None:
    """Describe a checkpoint or an artifact: architecture, parameters, dtype, context, files."""
    from edgerun.describe import describe

    desc = describe(path)
    if as_json:
        echo_json(desc)
    else:
        click.echo("\n".join(_render(desc)))
