"""Which llama.cpp pre-tokenizer (`tokenizer.ggml.pre`) reproduces an HF byte-level BPE tokenizer
that llama.cpp's converter does not recognise.

llama.cpp's converter names the pre-tokenizer from the sha256 of the token ids the tokenizer gives
for a fixed check string (`get_vocab_base_pre`); a tokenizer whose vocabulary is not one of its
known ones (freshly trained, or newer than the converter) makes it stop. edgerun then matches the
shape of the `pre_tokenizer` in tokenizer.json (`PRE_TOKENIZER_SHAPES`) to the llama.cpp
pre-tokenizer whose regex list (src/llama-vocab.cpp, `llm_tokenizer_bpe`) splits the same way.
Anything else is refused: a wrong pre-tokenizer name silently changes tokenization.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgerun.core.errors import EdgerunError

# HF split regexes, verbatim from tokenizer.json files (llama-vocab.cpp quotes them as "original").
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Shape of tokenizer.json's pre_tokenizer (see `shape`) -> llama.cpp name with the same regexes.
PRE_TOKENIZER_SHAPES: dict[tuple[str, ...], str] = {
    # ByteLevel(use_regex=True) applies the GPT-2 regex; LLAMA_VOCAB_PRE_TYPE_GPT2 uses that regex.
    ("ByteLevel+gpt2-regex",): "gpt-2",
    # Digits(individual) then GPT-2 regex: LLAMA_VOCAB_PRE_TYPE_SMOLLM is "\p{N}" then GPT-2.
    ("Digits(individual)", "ByteLevel+gpt2-regex"): "smollm",
    # Split(Llama 3 regex) then byte mapping: LLAMA_VOCAB_PRE_TYPE_LLAMA3.
    (f"Split:{LLAMA3_REGEX}", "ByteLevel"): "llama-bpe",
    # Split(Qwen2 regex) then byte mapping: LLAMA_VOCAB_PRE_TYPE_QWEN2.
    (f"Split:{QWEN2_REGEX}", "ByteLevel"): "qwen2",
}


def _step_shape(step: dict[str, Any]) -> str:
    kind = step.get("type", "?")
    if kind == "ByteLevel":
        if step.get("add_prefix_space"):
            return "ByteLevel+prefix-space"
        return "ByteLevel+gpt2-regex" if step.get("use_regex", True) else "ByteLevel"
    if kind == "Digits":
        return "Digits(individual)" if step.get("individual_digits") else "Digits"
    if kind == "Split":
        pattern = step.get("pattern", {})
        return f"Split:{pattern.get('Regex', pattern.get('String', '?'))}"
    return kind


def shape(tokenizer_json: dict[str, Any]) -> tuple[str, ...]:
    """The pre-tokenizer of a tokenizer.json as a tuple of step shapes (see PRE_TOKENIZER_SHAPES)."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    return tuple(_step_shape(step) for step in steps if step)


def pre_tokenizer_name(tokenizer: Any, checkpoint: Path) -> str:
    """The `tokenizer.ggml.pre` name for an HF byte-level BPE tokenizer, by the shape of its
    pre-tokenizer. Raises EdgerunError when the shape is not one llama.cpp has, or the
    tokenizer normalizes text first (llama.cpp's BPE tokenizer does not)."""
    data = json.loads((checkpoint / "tokenizer.json").read_text(encoding="utf-8"))
    normalizer = data.get("normalizer") or {}
    if steps := normalizer.get("normalizers", [normalizer] if normalizer else []):
        kinds = ", ".join(step.get("type", "?") for step in steps)
        raise EdgerunError(
            f"the tokenizer normalizes text ({kinds}) before byte-level BPE and is not a "
            "tokenizer llama.cpp knows; llama.cpp's BPE tokenizer does not normalize",
            "export this model to ONNX instead",
        )
    steps = shape(data)
    if (name := PRE_TOKENIZER_SHAPES.get(steps)) is not None:
        return name
    raise EdgerunError(
        f"the tokenizer's pre-tokenizer {list(steps)} matches no llama.cpp pre-tokenizer "
        "(llama.cpp's converter does not know its hash either)",
        "add its llama.cpp name to exporters/gguf/pretokenizers.py, or export to ONNX",
    )
