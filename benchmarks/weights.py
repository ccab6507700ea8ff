"""How many bytes of weights one decode step reads, per artifact (the roofline's denominator).

Decoding one token multiplies the hidden state by every weight matrix once, so every weight byte is
read once per token, except embedding tables that are only gathered from: those give one row per
token. An embedding table that is also the output projection (tied weights, GGUF without
``output.weight``, a shared quantized table) is read whole and counted. KV-cache reads (which grow
with the context) and activations are left out: the estimate is a lower bound on traffic, so the
roofline it gives is an upper bound on tok/s.
"""

from __future__ import annotations

import json
import struct
from collections import defaultdict
from pathlib import Path

WEIGHT_SUFFIXES = (".onnx", ".onnx.data", ".onnx_data", ".data", ".gguf", ".safetensors", ".bin")
GATHER_OPS = {"Gather", "GatherBlockQuantized"}


def weight_files(artifact: Path) -> list[Path]:
    """The files of an artifact that hold weights (a single file, or those inside a directory)."""
    artifact = Path(artifact)
    if artifact.is_file():
        return [artifact]
    return sorted(
        p for p in artifact.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)
    )


def artifact_bytes(artifact: Path) -> int:
    """Size on disk of the weight-bearing files of an artifact."""
    return sum(p.stat().st_size for p in weight_files(artifact))


def _onnx_tensor_bytes(tensor: object) -> int:
    import onnx
    from onnx import helper

    count = 1
    for d in tensor.dims:  # type: ignore[attr-defined]
        count *= d
    dtype = tensor.data_type  # type: ignore[attr-defined]
    four_bit = {getattr(onnx.TensorProto, n, -1) for n in ("INT4", "UINT4", "FLOAT4E2M1")}
    if dtype in four_bit:
        return (count + 1) // 2
    return count * helper.tensor_dtype_to_np_dtype(dtype).itemsize


def onnx_touched(model_file: Path) -> int:
    """Bytes of initializers one decode step reads: all, minus those only ever gathered from."""
    import onnx

    model = onnx.load(str(model_file), load_external_data=False)
    consumers: dict[str, set[str]] = defaultdict(set)
    for node in model.graph.node:
        for name in node.input:
            consumers[name].add(node.op_type)
    total = 0
    for init in model.graph.initializer:
        ops = consumers.get(init.name, set())
        if ops and ops <= GATHER_OPS:
            continue
        total += _onnx_tensor_bytes(init)
    return total


def gguf_touched(path: Path) -> int:
    """Bytes of GGUF tensors one decode step reads: all, minus token_embd when output exists."""
    from gguf import GGUFReader

    tensors = {t.name: int(t.n_bytes) for t in GGUFReader(str(path)).tensors}
    if "output.weight" in tensors:
        tensors.pop("token_embd.weight", None)
    return sum(tensors.values())


def safetensors_touched(checkpoint: Path) -> int:
    """Bytes of an HF checkpoint's tensors read per token (embedding only when tied to lm_head)."""
    config = json.loads((checkpoint / "config.json").read_text())
    tied = config.get("tie_word_embeddings", True)
    total = 0
    for file in sorted(checkpoint.glob("*.safetensors")):
        with file.open("rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            if name.endswith("embed_tokens.weight") and not tied:
                continue
            start, end = entry["data_offsets"]
            total += end - start
    return total


def main_onnx(directory: Path) -> Path | None:
    """The model file of an ONNX directory: the manifest's model_file, model.onnx, or the largest."""
    manifest = directory / "edgerun.json"
    if manifest.is_file():
        name = json.loads(manifest.read_text()).get("model_file")
        if name and name.endswith(".onnx") and (directory / name).is_file():
            return directory / name
    if (directory / "model.onnx").is_file():
        return directory / "model.onnx"
    files = sorted(directory.glob("*.onnx"), key=lambda p: p.stat().st_size)
    return files[-1] if files else None


def touched_bytes(artifact: Path) -> int:
    """Dispatch on the artifact: a .gguf file, an ONNX directory/file, or an HF checkpoint."""
    artifact = Path(artifact)
    if artifact.suffix == ".gguf":
        return gguf_touched(artifact)
    if artifact.suffix == ".onnx":
        return onnx_touched(artifact)
    main = main_onnx(artifact)
    if main is not None:
        return onnx_touched(main)
    ggufs = list(artifact.glob("*.gguf"))
    if ggufs:
        return gguf_touched(ggufs[0])
    if list(artifact.glob("*.safetensors")):
        return safetensors_touched(artifact)
    raise ValueError(f"no weights found in {artifact}")
