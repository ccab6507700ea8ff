"""`edgerun profiles list | show ID | detect | validate FILE`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from edgerun.cli.options import echo_json, json_option

if TYPE_CHECKING:  # pragma: no cover
    from edgerun.device.detect import Detection, MachineFacts
    from edgerun.device.profile import Profile


@click.group()
def profiles() -> None:
    """Device profiles: list them, show one, detect this machine's, validate a file."""


def _origin(profile: Profile) -> str:
    from edgerun.device.profile import user_profiles_dir

    return "user" if Path(profile.source).parent == user_profiles_dir() else "built-in"


@profiles.command("list")
@json_option
def list_cmd(as_json: bool) -> None:
    """List the built-in and user profiles.

    User profiles in $EDGERUN_HOME/profiles/*.toml override built-ins with the same id.
    """
    from edgerun.device.profile import list_profiles

    items = list_profiles()
    if as_json:
        echo_json(
            [{"id": p.id, "name": p.name, "origin": _origin(p), "source": p.source} for p in items]
        )
        return
    width = max(len(p.id) for p in items)
    for p in items:
        suffix = "  (user)" if _origin(p) == "user" else ""
        click.echo(f"{p.id:<{width}}  {p.name}{suffix}")


def render_profile(p: Profile) -> list[str]:
    """A profile as indented text lines (what `profiles show` prints)."""
    m = p.match
    rules = {
        "arch": " / ".join(m.arch),
        "os": " / ".join(m.os),
        "cpu flags": ", ".join(m.cpu_flags),
        "cpu model": " / ".join(m.cpu_model),
        "device tree": " / ".join(m.device_tree),
        "jetson": {None: "", True: "required", False: "excluded"}[m.jetson],
        "gpus": " / ".join(m.gpus),
        "ort providers": ", ".join(m.providers),
    }
    budget = (
        f"{p.memory_budget_mb} MiB" if p.memory_budget_mb else f"{p.memory_fraction:.0%} of RAM"
    )
    lines = [
        f"{p.id}: {p.name}",
        f"  {p.description}",
        f"  source: {p.source}",
        f"  threads: {p.threads or 'physical cores'}",
        f"  preferred formats: {', '.join(p.preferred_formats) or '-'}",
        f"  memory budget: {budget}",
        f"  power meter: {p.power_meter}",
        f"  requires CPU features: {', '.join(p.requires_cpu_features) or '-'}",
        "  match: " + "; ".join(f"{k} {v}" for k, v in rules.items() if v),
        "  backends:",
    ]
    for i, b in enumerate(p.backends, 1):
        lines.append(f"    {i}. {b.name}" + (f"  {_kv(b.options)}" if b.options else ""))
        for prov in b.providers:
            lines.append(
                f"       - {prov.name}" + (f"  {_kv(prov.options)}" if prov.options else "")
            )
    if p.export:
        lines.append(f"  export options: {_kv(p.export)}")
    if p.affinity:
        lines.append(f"  affinity: CPUs {', '.join(map(str, p.affinity))}")
    if p.tuned:
        from edgerun.tune.profile_write import why_lines

        lines += [f"  {line}" for line in why_lines(p)]
    return lines


def _kv(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in options.items())


@profiles.command("show")
@click.argument("profile_id")
@json_option
def show_cmd(profile_id: str, as_json: bool) -> None:
    """Show one profile, by id or .toml path."""
    from edgerun.device.profile import get_profile

    profile = get_profile(profile_id)
    if as_json:
        echo_json(profile.to_dict())
    else:
        click.echo("\n".join(render_profile(profile)))


def render_detection(facts: MachineFacts, d: Detection) -> list[str]:
    """The machine's facts, the winner and why, the runners-up, and what was ruled out."""
    cores = facts.physical_cores or "?"
    ram = f"{facts.ram_bytes / 2**30:.1f} GiB" if facts.ram_bytes else "?"
    lines = [
        f"machine: {facts.arch} {facts.os}, {facts.cpu_model or 'unknown CPU'},"
        f" {cores} physical cores, {ram} RAM",
    ]
    if facts.device_tree_model:
        lines.append(f"device tree: {facts.device_tree_model}")
    if facts.jetson_release:
        lines.append(f"jetson: {facts.jetson_release}")
    lines.append(f"gpus: {', '.join(facts.gpus) or 'none'}")
    lines.append(f"onnxruntime providers: {', '.join(facts.ort_providers) or 'none'}")
    lines.append(f"profile: {d.profile.id} (score {d.score})")
    lines += [f"  because: {r}" for r in d.reasons]
    for p, score, reasons in d.ranking[1:]:
        lines.append(f"  also matches: {p.id} (score {score}: {'; '.join(reasons)})")
    for p, why in d.rejected:
        lines.append(f"  ruled out: {p.id} ({why})")
    return lines


@profiles.command("detect")
@json_option
def detect_cmd(as_json: bool) -> None:
    """Detect this machine's profile and say why.

    Every profile is scored against the CPU architecture and flags, device-tree model, Jetson
    release, GPUs, OS and ONNX Runtime providers; the highest score wins.
    """
    from edgerun.device.detect import detect, machine_facts

    facts = machine_facts()
    d = detect(facts)
    if not as_json:
        click.echo("\n".join(render_detection(facts, d)))
        return
    echo_json(
        {
            "facts": facts.to_dict(),
            "profile": d.profile.id,
            "score": d.score,
            "reasons": d.reasons,
            "ranking": [{"id": p.id, "score": s, "reasons": r} for p, s, r in d.ranking],
            "rejected": [{"id": p.id, "reason": why} for p, why in d.rejected],
        }
    )


@profiles.command("validate")
@click.argument("file", type=click.Path(path_type=Path))
@json_option
def validate_cmd(file: Path, as_json: bool) -> None:
    """Check a profile file against the schema.

    Errors name the file, the key and the line.
    """
    from edgerun.device.profile import load_profile_file

    profile = load_profile_file(file)
    if as_json:
        echo_json({"valid": True, "file": str(file), "id": profile.id})
    else:
        click.echo(f"ok: {file} is a valid profile ('{profile.id}')")
