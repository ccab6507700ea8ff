"""Fitting a profile to this machine's runtime: which ONNX Runtime execution providers to ask for
(the profile's ordered list intersected with what the installed onnxruntime offers, falling back
with a warning, or refusing under --strict), and whether a model fits the profile's memory budget.
Profiles are data (edgerun.device.profile); choosing what runs lives here, with the backends."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgerun.core.errors import EdgerunError

if TYPE_CHECKING:  # pragma: no cover
    from edgerun.device.profile import Profile

CPU_PROVIDER = "CPUExecutionProvider"


@dataclass(frozen=True)
class ProviderChoice:
    """What select_providers decided: `providers` to pass to ONNX Runtime as (name, options) in
    order, what the profile `wanted`, and one warning per wanted provider that is not there."""

    providers: list[tuple[str, dict[str, Any]]]
    wanted: list[str]
    warnings: list[str]

    @property
    def names(self) -> list[str]:
        """The provider names only, in order."""
        return [name for name, _ in self.providers]


def select_providers(
    profile: Profile, backend: str, available: list[str], strict: bool = False
) -> ProviderChoice:
    """Intersect the profile's ordered providers for `backend` with `available` (as reported by
    onnxruntime.get_available_providers()). CPUExecutionProvider is always the last resort.

    A wanted provider that is missing gives the warning "wanted X, running Y"; with `strict` it
    raises EdgerunError instead.
    """
    pref = profile.backend(backend)
    prefs = [(p.name, dict(p.options)) for p in pref.providers] if pref else []
    if not any(name == CPU_PROVIDER for name, _ in prefs):
        prefs.append((CPU_PROVIDER, {}))
    chosen = [(name, options) for name, options in prefs if name in available]
    if not chosen:  # CPU missing from `available` too: an odd build, but CPU is always compiled in
        chosen = [(CPU_PROVIDER, {})]
    wanted = [name for name, _ in prefs]
    running = ", ".join(name for name, _ in chosen)
    missing = [name for name in wanted if name not in available and name != CPU_PROVIDER]
    warnings = [f"profile '{profile.id}' wanted {name}, running {running}" for name in missing]
    if strict and missing:
        raise EdgerunError(
            f"profile '{profile.id}' wants {', '.join(missing)}, which this onnxruntime build lacks"
            f" (available: {', '.join(available) or 'none'})",
            "install the onnxruntime build with that provider, or load with strict=False",
            cli_hint="install the onnxruntime build with that provider, or drop --strict",
        )
    return ProviderChoice(chosen, wanted, warnings)


def memory_budget_bytes(profile: Profile, ram_bytes: int | None = None) -> int:
    """The profile's memory budget in bytes: memory_budget_mb, else memory_fraction of the RAM."""
    if profile.memory_budget_mb is not None:
        return profile.memory_budget_mb * 2**20
    if ram_bytes is None:
        from edgerun.device.cgroup import ram_bytes as usable_ram

        ram_bytes = usable_ram()
    return int(ram_bytes * profile.memory_fraction)


def check_memory(
    profile: Profile,
    weights_bytes: int,
    kv_bytes: int,
    ram_bytes: int | None = None,
    note: str = "",
) -> None:
    """Raise EdgerunError, with the numbers in MiB and the fix, when weights + KV cache exceed the
    profile's budget (`ram_bytes` overrides the machine's RAM, for tests; `note` says where the
    weights' number comes from)."""
    budget = memory_budget_bytes(profile, ram_bytes)
    need = weights_bytes + kv_bytes
    if need <= budget:
        return
    mb = 2**20
    source = (
        "memory_budget_mb"
        if profile.memory_budget_mb is not None
        else f"{profile.memory_fraction:.0%} of RAM"
    )
    raise EdgerunError(
        f"the model needs {need / mb:.0f} MiB (weights {weights_bytes / mb:.0f} MiB"
        f"{f' as loaded: {note}' if note else ''} + KV cache"
        f" {kv_bytes / mb:.0f} MiB) but profile '{profile.id}' allows {budget / mb:.0f} MiB ({source})",
        "use a smaller quantization or a shorter context, or raise memory_budget_mb in a profile"
        " under $EDGERUN_HOME/profiles",
    )
