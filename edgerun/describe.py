"""Describe a checkpoint or an artifact without loading a framework: read config.json, the
safetensors headers (for parameter count and dtype) and, for artifacts, the edgerun.json manifest."""

from __future__ import annotations

import json
import struct
from collections import Counter
from pathlib import Path
from typing import Any

from edgerun.errors import EdgerunError
from edgerun.manifest import MANIFEST_NAME as MANIFEST
from edgerun.manifest import read_manifest
from edgerun.untrusted import read_json_object

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
    if (path / MANIFEST).is_file():
        return describe_artifact(path)
    if not (path / "config.json").is_file():
        raise EdgerunError(
            f"{path} is neither a checkpoint (no config.json) nor an artifact (no {MANIFEST})",
            "pass a directory made by `edgerun pull` or `edgerun export`",
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
    """Summary of an exported artifact, from its manifest."""
    manifest = read_manifest(path)
    files = _files(path)
    return {
        "kind": "artifact",
        "path": str(path.resolve()),
        "format": manifest.get("format"),
        "precision": manifest.get("precision"),
        "builder": manifest.get("builder"),
        "architecture": manifest.get("architecture"),
        "context_length": manifest.get("context_length"),
        "source": manifest.get("source"),
        "validation": manifest.get("validation"),
        "files": files,
        "total_bytes": sum(f["bytes"] for f in files),
    }
