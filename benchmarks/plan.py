"""The rows of the table, in order, each with what prepares its artifact.

Peers first (the tools users would pick instead), then every edgerun artifact format through
``edgerun.load``. A row whose library is missing, or whose artifact cannot be built, is kept with
``skip`` set to the reason, so the table and the JSON name it instead of dropping it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from benchmarks import runners, weights
from benchmarks.artifacts import Prep, Skip
from benchmarks.workload import RowSpec, select

EDGERUN_FORMATS = ("onnx-fp32", "onnx-int8", "onnx-int4", "gguf-q8_0", "gguf-q4_k_m", "gguf-q4_0")
LLAMA_ON_EDGERUN = ("gguf-q4_k_m", "gguf-q4_0", "gguf-q8_0")  # llama.cpp's loop on edgerun's files
INT4 = "int4 b32 acc4"
GENAI_BUILT = (
    "onnx-fp32",
    "onnx-int8",
    "onnx-int4",
)  # formats made from the genai graph by default

Prepare = Callable[[Prep], Path]


def catalog() -> list[tuple[RowSpec, Prepare]]:
    """Every row the suite knows, with the function that finds or builds its artifact."""
    rows: list[tuple[RowSpec, Prepare]] = [
        (RowSpec("llama.cpp q4_1 (source gguf)", "peer", "llama_cpp", "gguf q4_1"),
         lambda p: p.source_gguf()),
    ]  # fmt: skip
    for fmt in LLAMA_ON_EDGERUN:
        spec = RowSpec(f"llama.cpp {fmt}", "peer", "llama_cpp", fmt)
        rows.append((spec, lambda p, f=fmt: p.edgerun_gguf(f)))  # type: ignore[misc]
    rows += [
        (RowSpec("onnxruntime-genai int4", "peer", "genai", f"genai {INT4}"),
         lambda p: p.genai_int4()),
        (RowSpec("optimum int4", "peer", "optimum", f"onnx {INT4} (ORT)"),
         lambda p: p.optimum_int4()),
        (RowSpec("optimum fp32", "peer", "optimum", "onnx fp32"), lambda p: p.optimum_fp32()),
        (RowSpec("pytorch fp32", "peer", "torch", "safetensors fp32"), lambda p: p.checkpoint),
    ]  # fmt: skip
    for fmt in EDGERUN_FORMATS:
        spec = RowSpec(f"edgerun {fmt}", "edgerun", "edgerun", fmt)
        rows.append((spec, lambda p, f=fmt: p.edgerun(f)))  # type: ignore[misc]
        if fmt in GENAI_BUILT:  # the default builds these with genai's builder where it can
            spec = RowSpec(f"edgerun {fmt} (optimum builder)", "edgerun", "edgerun", fmt)
            rows.append((spec, lambda p, f=fmt: p.edgerun(f, builder="optimum")))  # type: ignore[misc]
    return rows


def plan(prep: Prep, only: str | None = None) -> list[RowSpec]:
    """The selected rows with their artifacts prepared (or their skip reason set)."""
    entries = catalog()
    chosen = {id(s) for s in select([s for s, _ in entries], only)}
    needed = [
        s.fmt
        for s, _ in entries
        if id(s) in chosen
        and s.fmt in EDGERUN_FORMATS
        and s.name in (f"edgerun {s.fmt}", f"llama.cpp {s.fmt}")  # not the other-builder rows
        and runners.missing(s.runner) is None
    ]
    prep.prebuild_edgerun(list(dict.fromkeys(needed)))
    out: list[RowSpec] = []
    for spec, prepare in entries:
        if id(spec) not in chosen:
            continue
        spec.skip = runners.missing(spec.runner)
        if spec.skip is None:
            try:
                spec.artifact = str(prepare(prep))
            except Skip as skip:
                spec.skip = str(skip)
        if spec.artifact:
            describe_artifact(spec)
        out.append(spec)
    return out


def describe_artifact(spec: RowSpec) -> None:
    """Record the artifact's size on disk and the bytes of weights one decode step reads."""
    assert spec.artifact is not None
    path = Path(spec.artifact)
    spec.meta["size_bytes"] = weights.artifact_bytes(path)
    try:
        spec.meta["touched_bytes"] = weights.touched_bytes(path)
    except Exception as exc:  # an estimate we cannot make is recorded, not fatal
        spec.meta["touched_bytes"] = None
        spec.meta["touched_error"] = f"{type(exc).__name__}: {exc}"
    manifest = path / "edgerun.json" if path.is_dir() else path.parent / "edgerun.json"
    if manifest.is_file():
        import json

        data = json.loads(manifest.read_text())
        spec.meta["validation"] = data.get("validation")
        spec.meta["edgerun_version"] = (data.get("libraries") or {}).get("edgerun")
        spec.meta["exported"] = (data.get("export") or {}).get("created")  # stale artifact?
