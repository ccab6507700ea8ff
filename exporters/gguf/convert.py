"""HF checkpoint (loaded PyTorch model + tokenizer) -> GGUF file in f32, f16 or bf16, with gguf-py.

The steps follow llama.cpp's convert_hf_to_gguf.py: hparams, tokenizer, then every tensor renamed
through gguf-py's TensorNameMap, with 1-D tensors and norms kept in f32. The file is written to
`<path>.partial` and renamed when complete, so an interrupted write never leaves a file that
looks finished.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from edgerun.exporters.gguf import vocab
from edgerun.exporters.gguf.arch import Architecture, for_model_type

from edgerun.errors import EdgerunError, require

# Float output types: format suffix -> (gguf.LlamaFileType member, gguf.GGMLQuantizationType member)
FLOAT_TYPES: dict[str, tuple[str, str]] = {
    "f32": ("ALL_F32", "F32"),
    "f16": ("MOSTLY_F16", "F16"),
    "bf16": ("MOSTLY_BF16", "BF16"),
}


def hf_tensors(model: Any, config: dict[str, Any]) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, float32 array) of every weight, without lm_head when embeddings are tied."""
    tied = config.get("tie_word_embeddings", False)
    for name, tensor in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd.weight when output.weight is absent
        yield name, tensor.detach().float().cpu().numpy()


def gguf_tensors(arch: Architecture, model: Any) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, array) pairs: renamed, per-architecture quirks applied, extras added."""
    import gguf

    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.gguf_arch), arch.n_layer)
    for hf_name, data in hf_tensors(model, arch.config):
        if hf_name.endswith(arch.skip_suffixes):
            continue
        new_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise EdgerunError(
                f"cannot map tensor '{hf_name}' of this {arch.model_type} checkpoint to GGUF",
                "the checkpoint has parts llama.cpp's architecture does not know",
            )
        yield new_name, arch.transform(hf_name, data)
    yield from arch.extra_tensors()


def _tensor_type(name: str, data: np.ndarray, out_type: str) -> str:
    # llama.cpp ModelBase.prepare_tensors: 1-D tensors, norms and rope factors stay f32.
    if data.ndim <= 1 or name.endswith("_norm.weight") or name == "rope_freqs.weight":
        return "F32"
    return out_type


def _write_general(writer: Any, model: Any, checkpoint: Path) -> None:
    """general.* keys (name, basename, size label, license ...) from the model card and config,
    with gguf-py's Metadata heuristics, as llama.cpp's prepare_metadata does."""
    import gguf

    n_params = sum(p.numel() for p in model.parameters())
    metadata = gguf.Metadata.load(None, checkpoint, None, n_params)
    metadata.name = metadata.name or checkpoint.name
    metadata.set_gguf_meta_model(writer)


def convert(
    model: Any, tokenizer: Any, checkpoint: Path, out: Path, out_type: str
) -> dict[str, Any]:
    """Write `out` as a GGUF of the model in `out_type` ("f32", "f16", "bf16").

    Returns a summary (architecture, pre-tokenizer, tensor count, vocab notes).
    Raises EdgerunError for an unsupported architecture or tokenizer.
    """
    require("gguf", "export")
    import gguf

    config: dict[str, Any] = model.config.to_dict()
    arch = for_model_type(config)
    meta = vocab.build(tokenizer, checkpoint, config["vocab_size"])
    file_type, tensor_type = FLOAT_TYPES[out_type]
    partial = out.with_name(out.name + ".partial")
    writer = gguf.GGUFWriter(
        partial, gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, arch.gguf_arch)]
    )
    try:
        _write_general(writer, model, checkpoint)
        arch.write_hparams(writer)
        writer.add_file_type(getattr(gguf.LlamaFileType, file_type))
        vocab.write(writer, meta)
        count = 0
        for name, data in gguf_tensors(arch, model):
            qtype = getattr(gguf.GGMLQuantizationType, _tensor_type(name, data, tensor_type))
            writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
            count += 1
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=False)
        writer.close()
        os.replace(partial, out)
    except BaseException:  # Ctrl-C or disk full included: no half-written file stays behind
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    return {
        "architecture": arch.gguf_arch.lower(),
        "pre_tokenizer": meta.pre,
        "tensors": count,
        "vocab_notes": meta.notes,
        "add_bos": meta.add_bos,
    }
