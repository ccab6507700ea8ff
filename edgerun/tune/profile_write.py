"""The winner of a search written as a user profile, with its provenance.

``$EDGERUN_HOME/profiles/tuned-<base>.toml`` is the base profile (the one detected or named) with
the winner's settings put first: its format first in preferred_formats, its backend first in
[[backends]] with the options it was measured with, its thread count and CPU affinity. A
``[tuned]`` table says on which machine it was measured (detection prefers it there and only
there: edgerun.device.detect) and summarises why; ``tuned-<base>.tune.json`` beside it holds the whole
provenance: the searched space, every trial, fidelity checks, the default's and the winner's
measurements with their spread, library versions and the date.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from edgerun.core.home import atomic_write_json, atomic_write_text, ensure_dir
from edgerun.device.profile import Profile, parse_profile, user_profiles_dir

PROVENANCE_SUFFIX = ".tune.json"
MAX_PROVENANCE_BYTES = 8 << 20


def _value(value: Any) -> str:
    """A TOML value: strings as JSON-escaped basic strings (valid TOML), arrays, inline tables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _table(name: str, values: dict[str, Any]) -> list[str]:
    lines = [f"[{name}]"]
    lines += [f"{_key(k)} = {_value(v)}" for k, v in values.items() if v is not None]
    return lines


def profile_toml(profile: Profile) -> str:
    """The TOML text of `profile` (what profile.parse_profile reads back)."""
    top = {
        "id": profile.id,
        "name": profile.name,
        "description": profile.description,
        "threads": profile.threads if profile.threads else "auto",
        "preferred_formats": profile.preferred_formats,
        "memory_budget_mb": profile.memory_budget_mb or "auto",
        "memory_fraction": profile.memory_fraction,
        "power_meter": profile.power_meter,
        "requires_cpu_features": profile.requires_cpu_features,
        "affinity": profile.affinity,
    }
    lines = ["# Written by `edgerun tune`; see [tuned] and the .tune.json beside it."]
    lines += [f"{k} = {_value(v)}" for k, v in top.items() if v != []]
    lines += ["", *_table("tuned", profile.tuned)]
    if profile.export:
        lines += ["", *_table("export", profile.export)]
    match = {k: v for k, v in vars(profile.match).items() if v not in ([], None)}
    lines += ["", *_table("match", match)]
    for backend in profile.backends:
        lines += ["", "[[backends]]", f"name = {_value(backend.name)}"]
        if backend.options:
            lines.append(f"options = {_value(backend.options)}")
        for provider in backend.providers:
            lines += ["[[backends.providers]]", f"name = {_value(provider.name)}"]
            if provider.options:
                lines.append(f"options = {_value(provider.options)}")
    return "\n".join(lines) + "\n"


def write_tuned_profile(profile: Profile, provenance: dict[str, Any]) -> Path:
    """Write `profile` (checked by reading it back) and its provenance into the user profiles
    directory; returns the TOML's path. Raises EdgerunError when it cannot be written."""
    text = profile_toml(profile)
    parse_profile(text, f"tuned profile {profile.id}")  # what we write must load
    folder = ensure_dir(user_profiles_dir())
    path = folder / f"{profile.id}.toml"
    atomic_write_text(path, text)
    atomic_write_json(folder / f"{profile.id}{PROVENANCE_SUFFIX}", provenance)
    return path


def read_provenance(profile: Profile) -> dict[str, Any] | None:
    """The provenance beside a tuned profile's file (None: not tuned, or no file). It is data
    from disk: bounded and checked to be an object."""
    if not profile.tuned or not profile.source.endswith(".toml"):
        return None
    path = Path(profile.source[: -len(".toml")] + PROVENANCE_SUFFIX)
    if not path.is_file():
        return None
    from edgerun.core.untrusted import read_json

    data = read_json(path, "re-run edgerun tune", MAX_PROVENANCE_BYTES)
    return data if isinstance(data, dict) else None


def why_lines(profile: Profile) -> list[str]:
    """What `profiles show` prints for a tuned profile: where, when, and default vs winner."""
    tuned = profile.tuned
    if not tuned:
        return []
    lines = [
        f"tuned by edgerun tune on {tuned.get('date')} on this machine: {tuned.get('cpu_model')}"
        f" ({tuned.get('physical_cores')} cores), objective {tuned.get('objective')}",
        f"winner: {tuned.get('winner')}",
        f"  {tuned.get('winner_measured')}",
        f"default: {tuned.get('default')}",
        f"  {tuned.get('default_measured')}",
        f"{tuned.get('trials')} trials of {tuned.get('exhaustive_configs')} configurations in"
        f" the space, {tuned.get('refused')} refused for fidelity, stopped: {tuned.get('stopped')}",
    ]
    return lines
