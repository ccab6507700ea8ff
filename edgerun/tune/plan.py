"""From what the user passed (an artifact or an export directory) and a device profile to the
search space: which artifacts, on which installed backends, with which dimensions, the default
(what `edgerun run` picks today) first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgerun.backends.base import Artifact, resolve_artifact
from edgerun.core.errors import EdgerunError
from edgerun.core.manifest import MANIFEST_NAME
from edgerun.device.profile import Profile
from edgerun.tune.space import Arm, Space, build_arm, run_fixed
from edgerun.tune.topology import Topology


def candidate_artifacts(path: Path) -> list[Path]:
    """`path` itself when it is an artifact (or a bare model file); else every artifact of the
    export directory whose validation passed (a failed one is never a candidate)."""
    from edgerun.core.manifest import read_manifest

    if path.is_file() or (path / MANIFEST_NAME).is_file():
        return [path]
    found = []
    for sub in sorted(p for p in path.iterdir() if (p / MANIFEST_NAME).is_file()):
        try:
            validation = read_manifest(sub).get("validation") or {}
        except EdgerunError:
            continue
        if validation.get("passed", True):
            found.append(sub)
    if not found:
        raise EdgerunError(
            f"{path} holds no artifact that passed validation",
            "pass an artifact directory, a .gguf / .onnx file, or an export directory",
        )
    return found


def _mean_kl(artifact: Artifact) -> float | None:
    value = (artifact.manifest.get("validation") or {}).get("mean_kl")
    return float(value) if isinstance(value, (int, float)) else None


def _accuracy_levels(artifact: Artifact) -> list[int]:
    """The MatMulNBits accuracy levels of an ONNX artifact's graph ([] for other formats)."""
    if artifact.family != "onnx":
        return []
    from edgerun.backends.ort_accuracy import graph_levels

    return graph_levels(artifact.model_file)


def _same_levels(artifact: Artifact) -> dict[str, str]:
    """Graph optimisation levels that optimize an ONNX artifact's graph exactly as an earlier
    level does ({} for other formats, or when onnxruntime cannot say: then every level is
    measured)."""
    if artifact.family != "onnx":
        return {}
    from edgerun.backends.ort_graph_levels import same_as
    from edgerun.tune.space import ORT_LEVELS

    try:
        return same_as(artifact.model_file, ORT_LEVELS)
    except EdgerunError:
        return {}


def _slower_levels(artifact: Artifact, levels: list[int]) -> dict[int, str]:
    """Accuracy levels an ONNX artifact's MatMulNBits products run slower beyond doubt on this
    CPU than its exported level, with what was measured ({} when it has no single level, or
    when onnxruntime cannot say: then every level is measured)."""
    from edgerun.tune.space import accuracy_dim

    dim = accuracy_dim(levels)
    if dim is None:
        return {}
    from edgerun.backends.ort_nbits_probe import slower_levels

    try:
        return slower_levels(artifact.model_file, dim.values[0], dim.values[1:])
    except EdgerunError:
        return {}


def _backends(artifact: Artifact, profile: Profile | None) -> list[str]:
    """Installed backends that run `artifact`, the profile's order first."""
    from edgerun.backends.registry import backends_for, is_installed

    able = [cls.name for cls in backends_for(artifact) if is_installed(cls)]
    order = [b.name for b in profile.backends] if profile else []
    return sorted(able, key=lambda n: order.index(n) if n in order else len(order))


def plan_space(
    path: Path, profile: Profile | None, topology: Topology, default_threads: int
) -> Space:
    """The space for `path`: one arm per (candidate artifact, installed backend). The first arm
    is what the runtime picks without tuning: the profile's preferred format of an export
    directory and the profile's first backend that runs it."""
    from edgerun.backends.select import pick_from_export_dir
    from edgerun.device.resolve import Resolved

    chosen, _why = pick_from_export_dir(path, Resolved(profile, "the tuned profile"))
    arms: list[Arm] = []
    for candidate in candidate_artifacts(path):
        artifact = resolve_artifact(candidate)
        for backend in _backends(artifact, profile):
            ort = backend == "onnxruntime"
            levels = _accuracy_levels(artifact) if ort else []
            arm = build_arm(
                candidate, artifact.format or candidate.name, backend, topology,
                default_threads, _mean_kl(artifact), levels,
                _same_levels(artifact) if ort else None,
                _slower_levels(artifact, levels) if ort else None,
            )  # fmt: skip
            arms.append(arm)
    if not arms:
        raise EdgerunError(f"no installed backend runs {path}", "pip install 'edgerun[all]'")
    run_fixed(arms)
    first = next((a for a in arms if Path(a.artifact) == Path(chosen)), arms[0])
    arms.remove(first)
    return Space([first, *arms], topology, topology.affinity_choices())


def context_note(path: Path, profile: Profile | None) -> dict[str, Any]:
    """The context the runtime sizes to the profile's memory budget for `path`, and why."""
    from edgerun.backends.select import choose_context

    context, why = choose_context(resolve_artifact(path), profile, None)
    return {"context": context, "why": why}
