"""From an artifact and a device profile to an open backend: which backend, which execution
providers, how many threads, how much context, whether it fits in memory, and which tokenizer.

Every fallback is a warning on stderr naming what was wanted and what runs; strict makes it an
error.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgerun.backends.base import (
    DEFAULT_CONTEXT,
    MAX_DEFAULT_CONTEXT,
    Artifact,
    Backend,
    Settings,
    kv_bytes_per_token,
)
from edgerun.backends.registry import (
    backend_names,
    backends_for,
    get_backend,
    is_installed,
    require_installed,
)
from edgerun.core.errors import EdgerunError

# Sizing the default context from a profile's memory budget: what a loaded model needs besides
# its weights and KV cache (runtime, tokenizer, activations; the bound is 0.5 GB), the
# step the context is rounded down to, and the shortest context it is sized down to (below it
# the budget check refuses the load instead).
RUNTIME_OVERHEAD = 512 * 2**20
CONTEXT_STEP = 256
MIN_SIZED_CONTEXT = 512
# A load that grows the process by more than the file plus this copied the weights (the
# session's own allocations are RUNTIME_OVERHEAD's): SmolLM2-135M's onnx-int4 session added
# 133 MiB of anonymous memory to a 100 MiB file, its onnx-int8 one 195 MiB to 146 MiB.
LOAD_SLACK = 32 * 2**20

if TYPE_CHECKING:  # pragma: no cover
    from edgerun.device.profile import BackendPref, Profile
    from edgerun.device.resolve import Resolved
    from edgerun.text.tokenizer import Tokenizer


@dataclass
class Opened:
    """An open backend and everything the runtime decided on the way."""

    backend: Backend
    tokenizer: Tokenizer
    profile_id: str | None
    profile_reason: str
    context_length: int
    requested_providers: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    context_reason: str = ""
    # bytes the profile's budget leaves after weights, KV cache and runtime (None: no profile)
    memory_room: int | None = None


def pick_from_export_dir(path: Path, resolved: Resolved) -> tuple[Path, str | None]:
    """An export directory (OUT/<format>/edgerun.json, several formats) -> the artifact the
    device profile prefers, with why; any other path is returned as it is (reason None).
    Preference: the first of the profile's preferred_formats that was exported and passed
    validation; else the first exported format (sorted) that passed."""
    from edgerun.core.manifest import MANIFEST_NAME, read_manifest

    path = Path(path)
    if not path.is_dir() or (path / MANIFEST_NAME).is_file():
        return path, None
    found: dict[str, tuple[Path, bool]] = {}
    for sub in sorted(p for p in path.iterdir() if (p / MANIFEST_NAME).is_file()):
        try:
            manifest = read_manifest(sub)
        except EdgerunError:
            continue  # unreadable: not a candidate; loading it by name still reports why
        passed = bool((manifest.get("validation") or {}).get("passed", True))
        found.setdefault(str(manifest.get("format") or sub.name), (sub, passed))
    if not found:
        return path, None
    chosen, why = resolved.profile, resolved.reason
    preferred = chosen.preferred_formats if chosen else []
    owner = f"profile {chosen.id}" if chosen else "the profile"
    exported = ", ".join(found)
    for fmt in preferred:
        if fmt in found and found[fmt][1]:
            return found[fmt][0], (
                f"{fmt} of {exported}: first of {owner}'s preferred_formats exported ({why})"
            )
    passing = [fmt for fmt, (_, ok) in found.items() if ok] or list(found)
    return found[passing[0]][0], (
        f"{passing[0]} of {exported}: none of {owner}'s preferred formats"
        f" ({', '.join(preferred) or 'none'}) was exported and passed validation"
    )


def choose_backend(
    artifact: Artifact, profile: Profile | None, name: str | None
) -> tuple[type[Backend], BackendPref | None, list[str]]:
    """(backend class, the profile's preferences for it, warnings).

    An explicit name wins; else the first backend in the profile's order that accepts the
    artifact and is installed; else the first registered backend that accepts it.
    """
    if name is not None:
        cls = get_backend(name)
        if not cls.accepts(artifact):
            names = ", ".join(c.name for c in backends_for(artifact)) or "none"
            raise EdgerunError(
                f"backend '{name}' cannot run {artifact.model_file.name} ({artifact.format or artifact.family})",
                f"backends that can: {names}",
            )
        require_installed(cls)
        return cls, profile.backend(name) if profile else None, []
    registered = set(backend_names())
    for pref in profile.backends if profile else []:
        if pref.name in registered:
            cls = get_backend(pref.name)
            if cls.accepts(artifact) and is_installed(cls):
                return cls, pref, []
    able = backends_for(artifact)
    if not able:
        raise EdgerunError(
            f"no backend can run {artifact.model_file} (family '{artifact.family}', builder '{artifact.builder}')",
            f"registered backends: {', '.join(sorted(registered))}",
        )
    cls = able[0]
    require_installed(cls)
    warnings = []
    if profile is not None:
        wanted = ", ".join(b.name for b in profile.backends)
        warnings.append(
            f"profile '{profile.id}' lists {wanted} for other artifacts; running {cls.name}"
        )
    return cls, profile.backend(cls.name) if profile else None, warnings


def open_backend(
    artifact: Artifact,
    resolved: Resolved,
    threads: int | None,
    backend_name: str | None,
    strict: bool,
    context: int | None,
    options: dict[str, Any],
) -> Opened:
    """Do the whole selection and load the model (see the module docstring)."""
    profile, reason = resolved.profile, resolved.reason
    cls, pref, warnings = choose_backend(artifact, profile, backend_name)
    warnings += cpu_feature_warnings(profile) + asked_warnings(artifact, threads, context)
    chosen, context_reason = choose_context(artifact, profile, context)
    settings = Settings(
        threads=threads or (profile.threads if profile else None) or _physical_cores(),
        options={**(pref.options if pref else {}), **options},
        context=chosen,
    )
    wanted: list[str] = []
    if cls.uses_providers and profile is not None:
        from edgerun.backends.providers import select_providers

        choice = select_providers(profile, cls.name, cls.available_providers(), strict)
        settings.providers, wanted = choice.providers, choice.wanted
        warnings += choice.warnings
    if settings.context is not None and settings.context < 1:
        raise EdgerunError(
            f"context must be at least 1, got {settings.context}", "pass a positive context"
        )
    checked = _check_memory(artifact, profile, settings)
    if profile is not None and profile.affinity and not threads:
        from edgerun.backends.affinity import pin_cpus

        pinned = pin_cpus(profile.affinity)
        warnings += [pinned] if pinned else []
    backend = cls(artifact, settings)
    try:
        if not checked:  # no config.json (bare GGUF): ask the loaded model
            _check_memory_loaded(artifact, profile, backend)
        if _weights_in_memory(artifact, backend) > artifact.weights_bytes():
            # the load copied the weights (ORT's prepacking): size and check again, as loaded
            if context is None and settings.context:
                sized, why = choose_context(artifact, profile, None, backend)
                if sized is not None and sized < settings.context:
                    settings.context, context_reason = sized, why
            _check_memory_loaded(artifact, profile, backend, settings.context)
        warnings += _check_active(backend, settings, strict)
        tokenizer = _tokenizer(artifact, backend)
    except BaseException:
        backend.close()
        raise
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    context_length = int(
        getattr(backend, "context_length", None) or settings.context or DEFAULT_CONTEXT
    )
    return Opened(
        backend=backend,
        tokenizer=tokenizer,
        profile_id=profile.id if profile else None,
        profile_reason=reason,
        context_length=context_length,
        context_reason=context_reason,
        memory_room=_memory_room(artifact, profile, backend, context_length),
        requested_providers=wanted,
        warnings=warnings,
    )


def cpu_feature_warnings(profile: Profile | None, root: Path = Path("/")) -> list[str]:
    """One warning when the machine under `root` lacks CPU features the profile's choices assume
    (profile key requires_cpu_features); none when its flags cannot be read."""
    if profile is None or not profile.requires_cpu_features:
        return []
    from edgerun.device.machine import cpu_flags

    flags = cpu_flags(root)
    missing = profile.missing_cpu_features(flags) if flags else []
    if not missing:
        return []
    return [
        f"this CPU lacks {', '.join(missing)}, which profile '{profile.id}' assumes: its formats"
        " and int4 kernels run slower or differently here (`edgerun profiles detect` names one"
        " for this CPU)"
    ]


def asked_warnings(artifact: Artifact, threads: int | None, context: int | None) -> list[str]:
    """A warning for settings the machine or the model cannot honour as asked: more threads than
    this process may run on CPUs, a context longer than the model was trained for."""
    warnings = []
    cpus = _usable_cpus()
    if threads is not None and threads > cpus:
        warnings.append(
            f"threads={threads} is more than the {cpus} CPUs this process can use: the extra"
            " threads wait for a core and slow decoding down"
        )
    trained = (
        artifact.manifest.get("context_length")
        or artifact.config().get("max_position_embeddings")
        or (_gguf_context(artifact.model_file) if context and artifact.family == "gguf" else None)
    )
    if context is not None and isinstance(trained, int) and context > trained > 0:
        warnings.append(
            f"context={context} is longer than the {trained} positions the model was trained on:"
            " text past them is likely to degrade, and the KV cache is sized for all of them"
        )
    return warnings


def _gguf_context(path: Path) -> Any:
    """`<arch>.context_length` from a bare GGUF's header (bounded reader); None if unreadable."""
    from edgerun.sources.gguf_header import read_header

    try:
        meta = read_header(path).metadata
    except (EdgerunError, OSError):
        return None  # llama.cpp's own load reports a damaged file
    return meta.get(f"{meta.get('general.architecture')}.context_length")


def _usable_cpus() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _physical_cores() -> int | None:
    import psutil

    return psutil.cpu_count(logical=False) or psutil.cpu_count() or None


def _model_context(artifact: Artifact) -> int | None:
    """The trained context (manifest, then config.json) capped at MAX_DEFAULT_CONTEXT; None lets
    the backend read it from the model file (bare GGUF)."""
    value = artifact.manifest.get("context_length") or artifact.config().get(
        "max_position_embeddings"
    )
    if value:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise EdgerunError(
                f"{artifact.path}: the context length {value!r} in config.json is not a"
                " positive integer",
                "re-export the artifact, or load it with context=N",
                cli_hint="re-export the artifact, or pass --context N",
            )
        return min(value, MAX_DEFAULT_CONTEXT)
    return None if artifact.family == "gguf" else DEFAULT_CONTEXT


def choose_context(
    artifact: Artifact,
    profile: Profile | None,
    asked: int | None,
    loaded: Backend | None = None,
) -> tuple[int | None, str]:
    """(context length, why): the one asked for; else the trained context capped at
    MAX_DEFAULT_CONTEXT, shortened (to a multiple of CONTEXT_STEP, at least MIN_SIZED_CONTEXT)
    so that weights + KV cache + RUNTIME_OVERHEAD fit the profile's memory budget. None: the
    backend reads it from the model file (bare GGUF). With `loaded`, the weights are counted as
    that backend holds them (_weights_in_memory), else as the file."""
    if asked:
        return asked, "asked for"
    trained = _model_context(artifact)
    per_token = _kv_per_token(artifact)
    if trained is None or profile is None or per_token is None:
        return trained, "the model's trained context" + _capped(artifact, trained)
    from edgerun.backends.providers import memory_budget_bytes

    budget = memory_budget_bytes(profile)
    weights = artifact.weights_bytes() if loaded is None else _weights_in_memory(artifact, loaded)
    room = budget - weights - RUNTIME_OVERHEAD
    fits = max(room // per_token // CONTEXT_STEP * CONTEXT_STEP, MIN_SIZED_CONTEXT)
    if fits >= trained:
        return trained, "the model's trained context" + _capped(artifact, trained)
    mb = 2**20
    as_loaded = " as loaded" if weights > artifact.weights_bytes() else ""
    return fits, (
        f"sized to profile '{profile.id}': its {budget / mb:.0f} MiB budget less"
        f" {weights / mb:.0f} MiB of weights{as_loaded} and {RUNTIME_OVERHEAD / mb:.0f} MiB"
        f" overhead holds the KV cache of {fits} positions ({per_token / 1024:.0f} KiB each);"
        f" the model's is {trained} (--context to choose)"
    )


def _capped(artifact: Artifact, context: int | None) -> str:
    trained = artifact.manifest.get("context_length") or artifact.config().get(
        "max_position_embeddings"
    )
    if context is not None and isinstance(trained, int) and trained > context:
        return f" ({trained}) capped at {context}"
    return f" ({context})" if context else ""


def _kv_per_token(artifact: Artifact) -> int | None:
    """KV-cache bytes per position from config.json (f16 for GGUF and half-precision ONNX)."""
    half = artifact.family == "gguf" or artifact.manifest.get("precision") in {"fp16", "bf16"}
    return kv_bytes_per_token(artifact.config(), 2 if half else 4)


def _check_memory(artifact: Artifact, profile: Profile | None, settings: Settings) -> bool:
    """Refuse before loading when weights + KV cache for the context exceed the budget.
    Returns False when config.json is missing, so the check has to wait for the loaded model."""
    if profile is None:
        return True
    per_token = _kv_per_token(artifact)
    if per_token is None or not settings.context:
        return False
    from edgerun.backends.providers import check_memory

    check_memory(profile, artifact.weights_bytes(), per_token * settings.context)
    return True


def _weights_in_memory(artifact: Artifact, backend: Backend) -> int:
    """The weights as the loaded backend holds them: the file, or what its load measurably
    added where it copies them (Backend.loaded_bytes) when that is more than LOAD_SLACK past
    the file (below it, the session's own allocations: RUNTIME_OVERHEAD's part)."""
    file, loaded = artifact.weights_bytes(), backend.loaded_bytes or 0
    return loaded if loaded > file + LOAD_SLACK else file


def _check_memory_loaded(
    artifact: Artifact, profile: Profile | None, backend: Backend, context: int | None = None
) -> None:
    """The budget check once loaded. Where the load copied the weights past the file, what is
    checked is this process's anonymous memory now (the copy, the runtime, the tokenizer:
    measured, not assumed) plus the KV cache."""
    per_token = backend.kv_bytes_per_token()
    context = getattr(backend, "context_length", None) or context
    if profile is None or per_token is None or not context:
        return
    from edgerun.backends.providers import check_memory

    weights, note = artifact.weights_bytes(), ""
    copy = _weights_in_memory(artifact, backend)
    if copy > weights:
        from edgerun.device.memory import anonymous_bytes

        mb = 2**20
        if backend.loaded_mapped:  # the copy is mapped: not in the anonymous memory
            note = (
                f"this process plus {backend.name}'s {copy / mb:.0f} MiB packed copy of the"
                f" {weights / mb:.0f} MiB file, mapped"
            )
            weights = anonymous_bytes() + copy
        else:
            note = (
                f"this process with {backend.name}'s {copy / mb:.0f} MiB copy of the"
                f" {weights / mb:.0f} MiB file"
            )
            weights = max(anonymous_bytes(), copy)
    check_memory(profile, weights, per_token * int(context), note=note)


def _memory_room(
    artifact: Artifact, profile: Profile | None, backend: Backend, context: int
) -> int | None:
    """What the profile's memory budget leaves once weights, the KV cache of `context`
    positions and RUNTIME_OVERHEAD are counted (what the prompt cache may use by default)."""
    per_token = backend.kv_bytes_per_token() or _kv_per_token(artifact)
    if profile is None or per_token is None:
        return None
    from edgerun.backends.providers import memory_budget_bytes

    used = _weights_in_memory(artifact, backend) + per_token * context + RUNTIME_OVERHEAD
    return memory_budget_bytes(profile) - used


def _check_active(backend: Backend, settings: Settings, strict: bool) -> list[str]:
    """The session may drop a provider it could not initialise: compare with what was asked."""
    problems = list(backend.fallbacks)
    if backend.uses_providers and settings.providers:
        first = settings.providers[0][0]
        if first not in backend.providers:
            problems.append(
                f"asked {backend.name} for {first}, but the session runs {', '.join(backend.providers)}"
            )
    if strict and problems:
        raise EdgerunError(
            problems[0],
            "fix that installation, or load with strict=False to fall back",
            cli_hint="fix that installation, or drop --strict to fall back",
        )
    return problems


def _tokenizer(artifact: Artifact, backend: Backend) -> Tokenizer:
    """tokenizer.json next to the model (same ids on every backend), else the model's own."""
    if (artifact.path / "tokenizer.json").is_file():
        from edgerun.text.tokenizer import HFTokenizer

        return HFTokenizer(artifact.path)
    embedded = backend.tokenizer()
    if embedded is None:
        raise EdgerunError(
            f"no tokenizer.json next to {artifact.model_file}",
            "copy the model's tokenizer files into that directory, or re-export the artifact",
        )
    return embedded
