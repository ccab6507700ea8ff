"""Describe what `edgerun run` accepts, without loading a framework: a checkpoint (config.json and
the safetensors headers), an artifact (its edgerun.json manifest), an export directory (one
artifact per format) and a bare .gguf (its header) or .onnx file."""

from __future__ import annotations

import json
import struct
from collections import Counter
from pathlib import Path
from typing import Any

from edgerun.core.errors import EdgerunError
from edgerun.core.manifest import MANIFEST_NAME as MANIFEST
from edgerun.core.manifest import read_manifest
from edgerun.core.untrusted import read_json_object

_ST_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}
_ST_DTYPE = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


def human_bytes(n: float | None) -> str:
    """1536 -> '1.5 KiB': binary units, the one unit edgerun prints sizes in."""
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a .safetensors file (tensor names, dtypes, shapes, offsets)."""
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise EdgerunError(f"{path} is truncated", "re-create the checkpoint")
        (length,) = struct.unpack("<Q", raw)
        if length > path.stat().st_size - 8:
            raise EdgerunError(
                f"{path} is truncated (header of {length} bytes)", "re-create the checkpoint"
            )
        try:
            header = json.loads(fh.read(length))
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise EdgerunError(f"{path} has a damaged header", "re-create the checkpoint") from exc
    if not isinstance(header, dict):
        raise EdgerunError(f"{path} has a damaged header", "re-create the checkpoint")
    header.pop("__metadata__", None)
    return header


def count_parameters(path: Path) -> tuple[int | None, str | None]:
    """(parameter count, majority dtype) from the safetensors headers of a checkpoint dir."""
    files = sorted(path.glob("*.safetensors"))
    if not files:
        return None, None
    total = 0
    dtypes: Counter[str] = Counter()
    for file in files:
        for tensor in safetensors_header(file).values():
            n = 1
            for dim in tensor["shape"]:
                n *= dim
            total += n
            dtypes[tensor["dtype"]] += n
    top = dtypes.most_common(1)[0][0] if dtypes else None
    return total, _ST_DTYPE.get(top or "", (top or "").lower() or None)


def _files(path: Path) -> list[dict[str, Any]]:
    return [
        {"name": str(f.relative_to(path)), "bytes": f.stat().st_size}
        for f in sorted(path.rglob("*"))
        if f.is_file() and not f.name.startswith(".")
    ]


def describe(path: Path) -> dict[str, Any]:
    """A JSON-ready description of a checkpoint directory or an edgerun artifact directory."""
    path = Path(path)
    if not path.exists():
        raise EdgerunError(f"{path} does not exist", "check the path")
    if path.is_file():
        return describe_file(path)
    if (path / MANIFEST).is_file():
        return describe_artifact(path)
    formats = sorted(p for p in path.iterdir() if (p / MANIFEST).is_file())
    if formats and not (path / "config.json").is_file():
        return {
            "kind": "export",
            "path": str(path.resolve()),
            "artifacts": [_artifact_or_error(p) for p in formats],
        }
    if not (path / "config.json").is_file():
        raise EdgerunError(
            f"{path} is neither a checkpoint (no config.json), an artifact (no {MANIFEST}) nor an"
            " export directory (no artifact in it)",
            "pass a directory made by `edgerun pull` or `edgerun export`, or a .gguf / .onnx file",
        )
    config = read_json_object(path / "config.json", "point to a Hugging Face model directory")
    params, dtype = count_parameters(path)
    files = _files(path)
    return {
        "kind": "checkpoint",
        "path": str(path.resolve()),
        "architecture": (config.get("architectures") or [None])[0],
        "model_type": config.get("model_type"),
        "parameters": params,
        "dtype": dtype or config.get("torch_dtype") or config.get("dtype"),
        "context_length": config.get("max_position_embeddings"),
        "vocab_size": config.get("vocab_size"),
        "layers": config.get("num_hidden_layers"),
        "hidden_size": config.get("hidden_size"),
        "tied_embeddings": config.get("tie_word_embeddings"),
        "files": files,
        "total_bytes": sum(f["bytes"] for f in files),
    }


def describe_artifact(path: Path) -> dict[str, Any]:
    """Summary of an exported artifact, from its manifest: what it is, its bits per weight, the
    recipe it was quantized with, its speed probe and its tokenizer parity (GGUF), validation."""
    manifest = read_manifest(path)
    files = _files(path)
    quant = _dict(manifest.get("quant"))
    recipe = _dict(quant.get("recipe")).get("name")
    parity = _dict(_dict(manifest.get("gguf")).get("tokenizer_parity"))
    probe = _dict(manifest.get("probe"))
    return {
        "kind": "artifact",
        "path": str(path.resolve()),
        "format": manifest.get("format"),
        "precision": manifest.get("precision"),
        "builder": manifest.get("builder"),
        "architecture": manifest.get("architecture"),
        "context_length": manifest.get("context_length"),
        "bits_per_weight": _dict(manifest.get("size")).get("bits_per_weight"),
        "recipe": recipe if isinstance(recipe, str) else None,
        "probe_ms_per_token": probe.get("decode_ms_per_token"),
        "tokenizer_parity": parity.get("identical") if parity else None,
        "source": manifest.get("source"),
        "validation": manifest.get("validation"),
        "files": files,
        "total_bytes": sum(f["bytes"] for f in files),
    }


def _artifact_or_error(path: Path) -> dict[str, Any]:
    """describe_artifact, or for an artifact it cannot read, its path and why (the others of an
    export directory are still described)."""
    try:
        return describe_artifact(path)
    except EdgerunError as exc:
        return {"kind": "artifact", "path": str(path.resolve()), "error": str(exc), "files": []}


def describe_file(path: Path) -> dict[str, Any]:
    """A bare model file `run` accepts: a .gguf from its (bound-checked) header, with parameter
    count and bits per weight from its tensor shapes; an .onnx file by its size."""
    suffix = path.suffix.lower()
    if suffix not in (".gguf", ".onnx"):
        raise EdgerunError(
            f"{path} is neither .gguf nor .onnx", "pass a model file, or a directory"
        )
    files = [{"name": path.name, "bytes": path.stat().st_size}]
    desc: dict[str, Any] = {"kind": suffix[1:] + " file", "path": str(path.resolve())}
    if suffix == ".gguf":
        desc.update(_gguf_fields(path))
    return {**desc, "files": files, "total_bytes": files[0]["bytes"]}


def _gguf_fields(path: Path) -> dict[str, Any]:
    from edgerun.sources.gguf_header import read_header

    header = read_header(path)
    meta = header.metadata
    arch = meta.get("general.architecture")
    params = 0
    for shape, _, _ in header.tensors.values():
        n = 1
        for dim in shape:
            n *= dim
        params += n
    model_bytes = path.stat().st_size  # the whole file, as an artifact's size.bits_per_weight
    return {
        "name": meta.get("general.name"),
        "architecture": arch,
        "file_type": _file_type(meta.get("general.file_type")),
        "context_length": meta.get(f"{arch}.context_length"),
        "layers": meta.get(f"{arch}.block_count"),
        "parameters": params or None,
        "bits_per_weight": round(model_bytes * 8 / params, 3) if params else None,
    }


def _file_type(value: Any) -> Any:
    """llama.cpp's file type number as its name (`q4_k_m`) where gguf-py is installed to name it;
    else the number as it is."""
    import importlib.util

    if not isinstance(value, int) or importlib.util.find_spec("gguf") is None:
        return value
    import gguf

    try:
        return gguf.LlamaFileType(value).name.removeprefix("MOSTLY_").lower()
    except ValueError:
        return value


def _dict(value: Any) -> dict[str, Any]:
    """`value` when a manifest holds an object there, else {} (manifests are data from outside)."""
    return value if isinstance(value, dict) else {}
