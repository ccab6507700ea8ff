"""A checkpoint's weights memory-mapped from its safetensors files, and a transformers model whose
parameters are those mapped tensors: no copy of the model in memory, in any dtype.

onnxruntime-genai's builder reads a transformers model module by module and wraps every weight
in a lazy tensor that is cast to fp32 only when it is written; given this model instead of one
loaded whole in fp32 (transformers' default), the pages of a weight are read from the page cache
when its tensor is written or quantized, and can be dropped afterwards (`release`). 1-D tensors
(norms, biases: a few MB) are copied to fp32, because the builder computes with some of them
(e.g. gemma's `1 + weight`) and must compute what it computes from a model loaded in fp32.

The safetensors files are data from outside: every header entry is checked (dtype, shape, offsets
inside the file) before a byte of it is mapped.
"""

from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path
from typing import Any

from edgerun.core.errors import EdgerunError
from edgerun.core.untrusted import read_json_object

# safetensors dtype -> (torch dtype name, bytes per element); the float and int types a causal LM
# checkpoint stores.
DTYPES = {
    "F32": ("float32", 4),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "I64": ("int64", 8),
    "I32": ("int32", 4),
    "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
}
MAX_HEADER_BYTES = 100 << 20
INDEX = "model.safetensors.index.json"


def weight_files(checkpoint: Path) -> list[Path] | None:
    """The checkpoint's safetensors files (all of them, through the index when sharded); None
    when its weights are not (only) safetensors, e.g. pytorch_model.bin."""
    if any(checkpoint.glob("pytorch_model*.bin")) or any(checkpoint.glob("*.pt")):
        return None
    index = checkpoint / INDEX
    if index.is_file():
        weight_map = read_json_object(index, "re-create the checkpoint").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise EdgerunError(f"{index} has no weight_map", "re-create the checkpoint")
        names = sorted({str(v) for v in weight_map.values()})
        files = [checkpoint / n for n in names if "/" not in n and "\\" not in n]
        if len(files) != len(names) or not all(f.is_file() for f in files):
            raise EdgerunError(f"{index} names missing weight files", "re-create the checkpoint")
        return files
    files = sorted(checkpoint.glob("*.safetensors"))
    return files or None


class MappedWeights:
    """Every tensor of a checkpoint's safetensors files as a torch tensor over a private
    (copy-on-write) memory map of its file."""

    def __init__(self, files: list[Path]) -> None:
        self.tensors: dict[str, Any] = {}
        self._maps: list[mmap.mmap] = []
        for path in files:
            self._map_file(path)

    def _map_file(self, path: Path) -> None:
        import torch

        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if not 0 < length <= min(MAX_HEADER_BYTES, size - 8):
                raise EdgerunError(f"{path} has a damaged header", "re-create the checkpoint")
            header = _parse_header(path, fh.read(length))
            mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
        self._maps.append(mapped)
        base = 8 + length
        for name, (dtype, shape, start, end) in header.items():
            if base + end > size:
                raise EdgerunError(f"{path}: tensor {name} lies past the end of the file", "")
            count = (end - start) // DTYPES[dtype][1]
            tensor = torch.frombuffer(
                mapped, dtype=getattr(torch, DTYPES[dtype][0]), count=count, offset=base + start
            ).view(shape)
            self.tensors[name] = tensor

    def release(self) -> None:
        """Drop the pages of the files this process holds (they stay in the page cache and are
        read again when used again): called between tensors, it keeps the resident part of the
        checkpoint to about the tensor being written."""
        if hasattr(mmap, "MADV_DONTNEED"):
            for mapped in self._maps:
                mapped.madvise(mmap.MADV_DONTNEED)


def _parse_header(path: Path, raw: bytes) -> dict[str, tuple[str, list[int], int, int]]:
    """name -> (dtype, shape, start, end) from a safetensors header, every entry checked."""
    damaged = EdgerunError(f"{path} has a damaged header", "re-create the checkpoint")
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise damaged from exc
    if not isinstance(header, dict):
        raise damaged
    header.pop("__metadata__", None)
    entries = {}
    for name, entry in header.items():
        try:
            dtype, shape, (start, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        except (TypeError, KeyError, ValueError) as exc:
            raise damaged from exc
        if dtype not in DTYPES:
            raise EdgerunError(
                f"{path}: tensor {name} has dtype {dtype}", "convert it to bf16/fp32"
            )
        numel = 1
        for dim in shape:
            if not isinstance(dim, int) or dim < 0:
                raise damaged
            numel *= dim
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end):
            raise damaged
        if numel * DTYPES[dtype][1] != end - start:
            raise damaged
        entries[name] = (dtype, list(shape), start, end)
    return entries


def mapped_model(checkpoint: Path, weights: MappedWeights) -> Any:
    """The checkpoint's transformers causal LM built on the meta device, its parameters replaced by
    the mapped tensors (1-D ones copied to fp32), tied weights tied. EdgerunError when a
    parameter has no tensor in the files."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(checkpoint, trust_remote_code=False)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    state = {
        name: t if t.dim() >= 2 else t.to(torch.float32) for name, t in weights.tensors.items()
    }
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise EdgerunError(
            f"{checkpoint} has no tensor for {missing[0]} ({len(missing)} missing)",
            "re-create the checkpoint",
        )
    model.eval()
    return model
