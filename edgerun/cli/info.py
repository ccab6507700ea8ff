"""`edgerun info PATH`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgerun.cli.options import echo_json, json_option
from edgerun.sources.describe import human_bytes

# How a described field is printed (anything else: as it is); None when absent.
_SHOWN = {
    "parameters": lambda v: f"{v:,}",
    "bits_per_weight": lambda v: f"{v:.2f}",
    "probe_ms_per_token": lambda v: f"{v:.2f} ms/token (a short greedy decode at export)",
    "tokenizer_parity": lambda v: "identical to the source's" if v else "DIFFERS from the source's",
}
_LABELS = {"bits_per_weight": "bits/w", "probe_ms_per_token": "probe"}


def _num(value: Any, spec: str) -> str:
    """A recorded number, or n/a when the manifest holds null there."""
    return "n/a" if value is None else format(value, spec)


def _render(desc: dict[str, Any], indent: str = "") -> list[str]:
    if desc["kind"] == "export":
        lines = [f"export: {desc['path']} ({len(desc['artifacts'])} artifacts)"]
        for artifact in desc["artifacts"]:
            lines += _render(artifact, indent + "  ")
        return lines
    skip = {"files", "kind", "validation", "source", "path"}
    lines = [f"{indent}{desc['kind']}: {desc['path']}"]
    for key, value in desc.items():
        if key in skip or value is None:
            continue
        if key == "total_bytes":
            key, value = "size", human_bytes(value)
        elif key in _SHOWN:
            value = _SHOWN[key](value)
        lines.append(f"{indent}  {_LABELS.get(key, key.replace('_', ' '))}: {value}")
    if desc.get("validation"):
        v = desc["validation"]
        lines.append(
            f"{indent}  validation: "
            + ("passed" if v.get("passed") else "FAILED")
            + f" (ppl ratio {_num(v.get('ppl_ratio'), '.3f')}, mean KL"
            f" {_num(v.get('mean_kl'), '.4f')}, top-1 {_num(v.get('top1_agreement'), '.3f')})"
        )
    lines.append(f"{indent}  files:")
    lines += [f"{indent}    {f['name']}  {human_bytes(f['bytes'])}" for f in desc["files"]]
    return lines


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@json_option
def info(path: Path, as_json: bool) -> None:
    """Describe a checkpoint, an artifact, an export directory or a bare .gguf / .onnx file.

    What `run` accepts, without loading it: architecture, parameters, context, bits per weight,
    recipe, speed probe, tokenizer parity, validation, files (sizes in KiB / MiB / GiB)."""
    from edgerun.sources.describe import describe

    desc = describe(path)
    if as_json:
        echo_json(desc)
    else:
        click.echo("\n".join(_render(desc)))
