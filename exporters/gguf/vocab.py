"""Tokenizer metadata for GGUF: byte-level BPE ("gpt2") tokens, token types, merges, pre-tokenizer
name, special token ids, add-BOS/EOS behaviour and chat template.

Follows llama.cpp's convert_hf_to_gguf.py (`get_vocab_base`, `_set_vocab_gpt2`) and uses gguf-py's
SpecialVocab for merges, special ids and the chat template. Two differences, both so the GGUF
behaves like the HF checkpoint it came from:
- add_bos / add_eos are taken from what the HF tokenizer really does with add_special_tokens=True
  (llama.cpp reads tokenizer_config flags, and defaults differ per pre-tokenizer when absent);
- eos is the model's generation eos (generation_config.json / config.json) when it names one,
  since that is where HF `generate` stops.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgerun.exporters.gguf.pretokenizers import pre_tokenizer_name

from edgerun.errors import EdgerunError


@dataclass
class VocabMetadata:
    """Everything the GGUF tokenizer section holds (see `write`)."""

    tokens: list[str]
    token_types: list[int]
    pre: str
    special: Any  # gguf.SpecialVocab: merges, special ids, chat template
    add_bos: bool
    add_eos: bool
    notes: list[str] = field(default_factory=list)


def _check_representable(tokenizer: Any, checkpoint: Path) -> dict[str, Any]:
    if not getattr(tokenizer, "is_fast", False) or not (checkpoint / "tokenizer.json").is_file():
        raise EdgerunError(
            "the checkpoint has no fast tokenizer (tokenizer.json), which GGUF conversion reads",
            "save the tokenizer with a transformers version that writes tokenizer.json",
        )
    data: dict[str, Any] = json.loads((checkpoint / "tokenizer.json").read_text(encoding="utf-8"))
    model = data.get("model", {})
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(data.get("pre_tokenizer")):
        raise EdgerunError(
            f"the tokenizer is {model.get('type', 'unknown')} without byte-level pre-tokenization; "
            "edgerun writes GGUF only for byte-level BPE tokenizers (llama.cpp 'gpt2' model)",
            "export this model to ONNX instead (sentencepiece GGUF export is not implemented)",
        )
    return data


def _does_token_look_special(token: str) -> bool:
    # llama.cpp TextModel.does_token_look_special, the parts that apply to BPE vocabularies.
    return token in ("<pad>", "<mask>") or (token.startswith("<|") and token.endswith("|>"))


def tokens_and_types(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    """Token strings and llama.cpp token types for ids 0..vocab_size-1 (get_vocab_base)."""
    import gguf

    reverse = {i: tok for tok, i in tokenizer.vocab.items()}
    if max(reverse) >= vocab_size:
        raise EdgerunError(
            f"the tokenizer has token id {max(reverse)} >= the model's vocab_size {vocab_size}",
            "the tokenizer does not belong to this model",
        )
    added = tokenizer.get_added_vocab()
    decoder = tokenizer.added_tokens_decoder
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        token = reverse[i]
        if token in added:
            if not decoder[i].normalized:
                # llama.cpp assumes CONTROL / USER_DEFINED tokens are pre-normalized.
                token = tokenizer.decode(tokenizer.encode(token, add_special_tokens=False))
            special = decoder[i].special or _does_token_look_special(token)
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(token)
    return tokens, types


def _adds(tokenizer: Any) -> tuple[bool, bool]:
    """(adds BOS, adds EOS) as observed on the HF tokenizer."""
    plain = tokenizer.encode("a", add_special_tokens=False)
    full = tokenizer.encode("a", add_special_tokens=True)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    add_bos = bos is not None and len(full) > len(plain) and full[0] == bos
    add_eos = eos is not None and len(full) > len(plain) and full[-1] == eos
    return add_bos, add_eos


def _generation_eos(checkpoint: Path) -> int | None:
    for name in ("generation_config.json", "config.json"):
        path = checkpoint / name
        if path.is_file():
            eos = json.loads(path.read_text()).get("eos_token_id")
            if isinstance(eos, list) and eos:
                eos = eos[0]
            if isinstance(eos, int):
                return eos
    return None


def build(tokenizer: Any, checkpoint: Path, vocab_size: int) -> VocabMetadata:
    """Collect the tokenizer metadata of an HF checkpoint; EdgerunError if GGUF cannot hold it."""
    import gguf

    _check_representable(tokenizer, checkpoint)
    pre = pre_tokenizer_name(tokenizer, checkpoint)
    tokens, types = tokens_and_types(tokenizer, vocab_size)
    special = gguf.SpecialVocab(checkpoint, load_merges=True, n_vocab=vocab_size)
    if not special.merges:
        raise EdgerunError("the BPE tokenizer has no merges", "check tokenizer.json")
    notes = []
    eos = _generation_eos(checkpoint)
    if eos is not None and eos < vocab_size and special.special_token_ids.get("eos") != eos:
        notes.append(f"eos {special.special_token_ids.get('eos')} -> {eos} (generation config)")
        special.special_token_ids["eos"] = eos
    add_bos, add_eos = _adds(tokenizer)
    return VocabMetadata(tokens, types, pre, special, add_bos, add_eos, notes)


def write(writer: Any, meta: VocabMetadata) -> None:
    """Add the tokenizer section to a GGUFWriter (_set_vocab_gpt2)."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(meta.pre)
    writer.add_token_list(meta.tokens)
    writer.add_token_types(meta.token_types)
    # add_bos / add_eos are written explicitly instead of SpecialVocab's tokenizer_config flags:
    # llama.cpp's defaults when they are absent depend on the pre-tokenizer.
    meta.special.add_special_token.clear()
    meta.special.add_to_gguf(writer, quiet=True)
    writer.add_add_bos_token(meta.add_bos)
    writer.add_add_eos_token(meta.add_eos)
