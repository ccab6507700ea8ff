"""Device profiles: TOML data files that say how to recognise a device and how to run models on it.

Built-in profiles ship in the wheel as ``edgerun.profiles/*.toml``; a file in
``$EDGERUN_HOME/profiles/`` with the same ``id`` overrides a built-in. Files are validated against
the schema in ``PROFILE_SCHEMA``: an unknown key or a wrong type is an EdgerunError naming the
file, the key and the line.

    profile = get_profile("raspberry-pi-5")            # or a path to a .toml file
    # choosing what runs from it: edgerun.backends.providers (select_providers, check_memory)

A profile file (see profiles/*.toml for complete ones)::

    id = "my-board"                  # required: id, name, description, [match], [[backends]]
    name = "My board"
    description = "One line shown by `edgerun profiles list`."
    threads = 4                      # or "auto" (physical cores)
    preferred_formats = ["gguf-q4_0", "onnx-int4"]
    memory_budget_mb = 3000          # or "auto": memory_fraction (0.8) of the RAM
    power_meter = "auto"             # auto, none, cmd:COMMAND or a meter of edgerun.power.registry
    requires_cpu_features = ["asimddp"]  # /proc/cpuinfo flags its choices assume: run warns
    affinity = [4, 5, 6, 7]          # pin the runtime's threads to these CPUs (edgerun tune)
    [tuned]                          # written by `edgerun tune`: the machine it was tuned on
    [export]                         # export defaults: block_size, accuracy_level, symmetric, builder
    [match]                          # see MatchRules; arch is required
    arch = ["aarch64"]
    device_tree = ["My Board"]
    [[backends]]                     # in order of preference: onnxruntime, genai, llamacpp
    name = "onnxruntime"
    options = { graph_optimization_level = "ORT_ENABLE_ALL" }
    [[backends.providers]]           # ONNX Runtime execution providers, in order
    name = "CUDAExecutionProvider"
    options = { device_id = 0 }
"""

from __future__ import annotations

import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgerun.core.errors import EdgerunError
from edgerun.core.home import home
from edgerun.device.profile_schema import (
    Either,
    ListOf,
    OneOf,
    Options,
    SchemaError,
    Table,
    dotted,
    line_of,
)
from edgerun.device.profile_schema import check as check_schema

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# Names a profile may use come from the registries, never from lists kept here: backends from the
# "edgerun.backends" entry points (package metadata, nothing imported, so a plugin's name is
# accepted), power meters from edgerun.power.registry, format prefixes from the exporters' family
# table.
METER_KEYWORDS = ("auto", "none")
# Used when a profile sets no memory_budget_mb: this share of the machine's RAM.
DEFAULT_MEMORY_FRACTION = 0.8
__all__ = [
    "BackendPref",
    "MatchRules",
    "Profile",
    "ProviderPref",
    "get_profile",
    "list_profiles",
    "load_profile_file",
    "parse_profile",
]

_STR_LIST = ListOf(str)
MATCH_SCHEMA = Table(
    {
        "arch": _STR_LIST,
        "os": _STR_LIST,
        "cpu_flags": _STR_LIST,
        "cpu_model": _STR_LIST,
        "device_tree": _STR_LIST,
        "jetson": bool,
        "gpus": _STR_LIST,
        "providers": _STR_LIST,
    },
    required=("arch",),
)
PROVIDER_SCHEMA = Table({"name": str, "options": Options()}, required=("name",))
BACKEND_SCHEMA = Table(
    {"name": str, "providers": ListOf(PROVIDER_SCHEMA), "options": Options()},
    required=("name",),
)
EXPORT_SCHEMA = Table(
    {
        "block_size": int,
        "accuracy_level": int,
        "symmetric": bool,
        "builder": OneOf(("optimum", "genai")),
    }
)
PROFILE_SCHEMA = Table(
    {
        "id": str,
        "name": str,
        "description": str,
        "threads": Either((int, OneOf(("auto",)))),
        "preferred_formats": _STR_LIST,
        "export": EXPORT_SCHEMA,
        "memory_budget_mb": Either((int, OneOf(("auto",)))),
        "memory_fraction": float,
        "power_meter": str,
        "requires_cpu_features": _STR_LIST,
        "affinity": ListOf(int),
        "tuned": Options(),
        "match": MATCH_SCHEMA,
        "backends": ListOf(BACKEND_SCHEMA),
    },
    required=("id", "name", "description", "match", "backends"),
)


@dataclass(frozen=True)
class MatchRules:
    """How to recognise a device. Every listed rule must hold (see edgerun.device.detect for scoring).

    arch / os: any of (platform.machine() / platform.system()); cpu_flags: all present;
    cpu_model / device_tree / gpus: any is a case-insensitive substring of the CPU model, the
    device-tree model, or a GPU name; jetson: True needs /etc/nv_tegra_release, False forbids it;
    providers: ONNX Runtime execution providers that must be available.
    """

    arch: list[str]
    os: list[str] = field(default_factory=list)
    cpu_flags: list[str] = field(default_factory=list)
    cpu_model: list[str] = field(default_factory=list)
    device_tree: list[str] = field(default_factory=list)
    jetson: bool | None = None
    gpus: list[str] = field(default_factory=list)
    providers: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ProviderPref:
    """One ONNX Runtime execution provider and its provider options."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BackendPref:
    """One backend ("onnxruntime" | "genai" | "llamacpp"), its ordered providers and options."""

    name: str
    providers: list[ProviderPref] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Profile:
    """A validated device profile. threads None: physical cores; memory_budget_mb None: a share
    (memory_fraction) of the machine's RAM; backends in order of preference;
    requires_cpu_features: the /proc/cpuinfo flags its choices (formats, int4 accuracy level)
    assume, which `edgerun run` warns about when the machine lacks them; affinity: CPUs the
    runtime's threads are pinned to (empty: not pinned); tuned: set by `edgerun tune`, the
    machine it was measured on and a summary of why (edgerun.tune.profile_write)."""

    id: str
    name: str
    description: str
    match: MatchRules
    backends: list[BackendPref]
    threads: int | None = None
    preferred_formats: list[str] = field(default_factory=list)
    export: dict[str, Any] = field(default_factory=dict)
    memory_budget_mb: int | None = None
    memory_fraction: float = DEFAULT_MEMORY_FRACTION
    power_meter: str = "auto"
    requires_cpu_features: list[str] = field(default_factory=list)
    affinity: list[int] = field(default_factory=list)
    tuned: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def backend(self, name: str) -> BackendPref | None:
        """This profile's preferences for backend `name`, or None if it does not list it."""
        return next((b for b in self.backends if b.name == name), None)

    def missing_cpu_features(self, flags: frozenset[str]) -> list[str]:
        """The requires_cpu_features that `flags` (a machine's CPU flags) lack."""
        return [f for f in self.requires_cpu_features if f not in flags]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what `edgerun profiles show --json` prints)."""
        import dataclasses

        return dataclasses.asdict(self)


def _fail(path: Path | str, text: str, error: SchemaError) -> EdgerunError:
    line = line_of(text, error.path)
    return EdgerunError(
        f"{path}, line {line}: {dotted(error.path)}: {error.message}",
        "fix the profile file; `edgerun profiles validate FILE` checks it",
    )


def _build(data: dict[str, Any], source: str) -> Profile:
    backends = [
        BackendPref(
            name=b["name"],
            providers=[
                ProviderPref(p["name"], dict(p.get("options", {}))) for p in b.get("providers", [])
            ],
            options=dict(b.get("options", {})),
        )
        for b in data["backends"]
    ]
    threads = data.get("threads", "auto")
    budget = data.get("memory_budget_mb", "auto")
    return Profile(
        id=data["id"],
        name=data["name"],
        description=data["description"],
        match=MatchRules(**data["match"]),
        backends=backends,
        threads=None if threads == "auto" else threads,
        preferred_formats=list(data.get("preferred_formats", [])),
        export=dict(data.get("export", {})),
        memory_budget_mb=None if budget == "auto" else budget,
        memory_fraction=float(data.get("memory_fraction", DEFAULT_MEMORY_FRACTION)),
        power_meter=data.get("power_meter", "auto"),
        requires_cpu_features=list(data.get("requires_cpu_features", [])),
        affinity=list(data.get("affinity", [])),
        tuned=dict(data.get("tuned", {})),
        source=source,
    )


def parse_profile(text: str, source: str) -> Profile:
    """Validate and build a profile from TOML `text`; `source` names it in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise EdgerunError(f"{source}: invalid TOML: {exc}", "fix the syntax at that line") from exc
    try:
        check_schema(data, PROFILE_SCHEMA)
        _check_values(data)
    except SchemaError as exc:
        raise _fail(source, text, exc) from None
    return _build(data, source)


def _check_values(data: dict[str, Any]) -> None:
    """Rules beyond types: positive numbers, a non-empty backend list."""
    for i, cpu in enumerate(data.get("affinity", [])):
        if not 0 <= cpu < 4096:
            raise SchemaError(("affinity", i), f"must be a CPU number in 0..4095, got {cpu}")
    for key, most in (("threads", 4096), ("memory_budget_mb", 1 << 30)):
        if isinstance(data.get(key), int) and data[key] < 1:
            raise SchemaError((key,), f"must be at least 1, got {data[key]}")
        if isinstance(data.get(key), int) and data[key] > most:
            raise SchemaError((key,), f"must be at most {most}, got {data[key]}")
    fraction = data.get("memory_fraction", DEFAULT_MEMORY_FRACTION)
    if not 0 < fraction <= 1:
        raise SchemaError(("memory_fraction",), f"must be in (0, 1], got {fraction}")
    if not data["backends"]:
        raise SchemaError(("backends",), "list at least one backend")
    backends = backend_names()
    for i, backend in enumerate(data["backends"]):
        if backend["name"] not in backends:
            raise SchemaError(
                ("backends", i, "name"),
                f"expected one of {', '.join(sorted(backends))} (registered backends), "
                f"got {backend['name']!r}",
            )
    meters = power_meter_names()
    meter = data.get("power_meter", "auto")
    if meter not in meters and not meter.startswith("cmd:"):
        choices = ", ".join(meters)
        raise SchemaError(
            ("power_meter",), f"expected one of {choices} or 'cmd:COMMAND', got {meter!r}"
        )
    for i, flag in enumerate(data.get("requires_cpu_features", [])):
        if not re.fullmatch(r"[a-z0-9_]+", flag):
            raise SchemaError(
                ("requires_cpu_features", i),
                f"'{flag}' is not a CPU flag as /proc/cpuinfo spells it (e.g. asimddp, avx2)",
            )
    pattern = rf"({'|'.join(map(re.escape, format_prefixes()))})-[a-z0-9_]+"
    for i, fmt in enumerate(data.get("preferred_formats", [])):
        if not re.fullmatch(pattern, fmt):
            raise SchemaError(
                ("preferred_formats", i),
                f"'{fmt}' is not a format name like onnx-int4 or gguf-q4_0",
            )


def backend_names() -> list[str]:
    """The registered backends (entry points, read from metadata without importing them)."""
    from edgerun.core.plugins import BACKENDS_GROUP, entry_point_names

    return entry_point_names(BACKENDS_GROUP)


def power_meter_names() -> list[str]:
    """auto, none, and every meter in edgerun.power.registry."""
    from edgerun.power.registry import METERS

    return [*METER_KEYWORDS, *METERS]


def format_prefixes() -> list[str]:
    """The export format families ("onnx", "gguf", ...) of edgerun.core.format_registry."""
    from edgerun.core.format_registry import FAMILY_MODULES

    return list(FAMILY_MODULES)


def load_profile_file(path: str | Path) -> Profile:
    """Read, validate and return the profile at `path` (EdgerunError naming file, key and line)."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise EdgerunError(
            f"cannot read profile {path}: {exc.strerror or exc}", "check the path"
        ) from exc
    except UnicodeDecodeError as exc:
        raise EdgerunError(
            f"{path} is not UTF-8 text (byte {exc.start})", "save the profile as UTF-8 TOML"
        ) from exc
    return parse_profile(text, str(path))


def user_profiles_dir() -> Path:
    """Where user profiles live: $EDGERUN_HOME/profiles (not created here)."""
    return home() / "profiles"


def _builtin_profiles() -> list[Profile]:
    from importlib.resources import files

    root = files("edgerun.profiles")
    entries = sorted((e for e in root.iterdir() if e.name.endswith(".toml")), key=lambda e: e.name)
    return [parse_profile(e.read_text(encoding="utf-8"), str(e)) for e in entries]


def list_profiles() -> list[Profile]:
    """Every profile, sorted by id: the built-ins, with user profiles overriding them by id.

    A user profile file that cannot be loaded is skipped with a warning naming the file (logged
    once per process), so one broken file does not stop every command; `edgerun profiles
    validate FILE` still fails on it."""
    by_id = {p.id: p for p in _builtin_profiles()}
    user_dir = user_profiles_dir()
    if user_dir.is_dir():
        for path in sorted(user_dir.glob("*.toml")):
            try:
                profile = load_profile_file(path)
            except EdgerunError as exc:
                _warn_once(f"skipping the user profile {path}: {exc}")
                continue
            by_id[profile.id] = profile
    return [by_id[k] for k in sorted(by_id)]


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logging.getLogger("edgerun.device.profile").warning(message)


def get_profile(id_or_path: str | Path) -> Profile:
    """The profile with this id, or the one in this .toml file; unknown ids list the known ones."""
    text = str(id_or_path)
    if text.endswith(".toml") or "/" in text or "\\" in text:
        return load_profile_file(text)
    profiles = list_profiles()
    for profile in profiles:
        if profile.id == text:
            return profile
    raise EdgerunError(
        f"unknown profile '{text}'",
        "known profiles: " + ", ".join(p.id for p in profiles),
    )
