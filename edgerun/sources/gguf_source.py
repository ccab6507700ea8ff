"""GGUF file -> Hugging Face checkpoint, through transformers' GGUF loader.

transformers rebuilds the tokenizer from GGUF metadata but, as of 4.57, takes the wrong special
tokens for byte-level BPE vocabularies (SmolLM2: eos becomes <|im_start|>) and adds a BOS token even
where the file says `tokenizer.ggml.add_bos_token = false`. The GGUF metadata is the truth, so it is
re-applied here after loading.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgerun.core.errors import EdgerunError, first_line, require

# GGUF metadata key -> tokenizer attribute holding that special token.
_SPECIAL_IDS = {
    "tokenizer.ggml.bos_token_id": "bos_token",
    "tokenizer.ggml.eos_token_id": "eos_token",
    "tokenizer.ggml.unknown_token_id": "unk_token",
    "tokenizer.ggml.padding_token_id": "pad_token",
}


def gguf_metadata(path: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    """The scalar values of `keys` present in the GGUF file's metadata (bounded reader)."""
    from edgerun.sources.gguf_header import read_header

    metadata = read_header(path).metadata
    return {k: metadata[k] for k in keys if metadata.get(k) is not None}


def apply_gguf_tokenizer_metadata(tokenizer: Any, meta: dict[str, Any]) -> None:
    """Set special tokens and add-BOS behaviour on an HF fast tokenizer from GGUF metadata."""
    for key, attr in _SPECIAL_IDS.items():
        if key in meta:
            setattr(tokenizer, attr, tokenizer.convert_ids_to_tokens(int(meta[key])))
    add_bos = meta.get("tokenizer.ggml.add_bos_token")
    if add_bos is not None and hasattr(tokenizer, "add_bos_token"):
        tokenizer.add_bos_token = bool(add_bos)  # LlamaTokenizerFast rebuilds its post-processor


@contextlib.contextmanager
def _transformers_quiet() -> Iterator[None]:
    """Without transformers' raw tqdm bar ("Converting and de-quantizing GGUF tensors") and its
    notices (the LlamaTokenizerFast "legacy behaviour" one) while loading a GGUF; restored after."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    bar = gguf_utils.tqdm  # 4.57 calls tqdm directly there, ignoring disable_progress_bar()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    gguf_utils.tqdm = _no_bar
    try:
        yield
    finally:
        gguf_utils.tqdm = bar
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _no_bar(iterable: Any, *args: Any, **kwargs: Any) -> Any:
    return iterable


def dequantize_gguf(path: Path, out: Path) -> None:
    """Load a GGUF file through transformers' GGUF loader and save it as an fp32 HF checkpoint.

    transformers is shown the file alone (a link in a directory of its own), so no config,
    tokenizer config or Python file lying beside it is read, and remote code is refused
    (edgerun.sources.remote_code)."""
    require("torch", "export")
    require("gguf", "export")
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgerun.sources.remote_code import no_remote_code

    view = out / ".gguf-source"
    view.mkdir()
    (view / "model.gguf").symlink_to(path.resolve())
    load = {"gguf_file": "model.gguf", "trust_remote_code": False}
    try:
        with _transformers_quiet(), no_remote_code():  # the caller shows edgerun's progress
            tokenizer = AutoTokenizer.from_pretrained(view, **load)
            model = AutoModelForCausalLM.from_pretrained(view, dtype=torch.float32, **load)
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        first = first_line(exc)
        raise EdgerunError(
            f"transformers cannot load {path.name}: {first}",
            "use a GGUF of an architecture transformers supports (llama, qwen2, mistral, ...)",
        ) from exc
    finally:
        shutil.rmtree(view, ignore_errors=True)
    apply_gguf_tokenizer_metadata(
        tokenizer, gguf_metadata(path, (*_SPECIAL_IDS, "tokenizer.ggml.add_bos_token"))
    )
    if tokenizer.pad_token_id is not None and model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    # Fast tokenizer files only: with sentencepiece installed, the "slow" save would copy the
    # tokenizer's vocab_file (the whole GGUF) into the checkpoint as tokenizer.model.
    tokenizer.save_pretrained(out, legacy_format=False)
