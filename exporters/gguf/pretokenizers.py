"""Which llama.cpp pre-tokenizer (`tokenizer.ggml.pre`) reproduces an HF byte-level BPE tokenizer.

Data first. llama.cpp picks the name in `convert_hf_to_gguf.py::get_vocab_base_pre` from the
sha256 of the token ids the HF tokenizer gives for a fixed check string (`CHKTXT`); known hashes
are in `CHKHSH`. A tokenizer whose vocabulary is not one of those (e.g. freshly trained) falls
back to `PRE_TOKENIZER_SHAPES`: the shape of the `pre_tokenizer` in tokenizer.json, matched to the
llama.cpp pre-tokenizer whose regex list (src/llama-vocab.cpp, `llm_tokenizer_bpe`) does the same
splitting. Anything else is refused: a wrong pre-tokenizer name silently changes tokenization.

Provenance: ggml-org/llama.cpp convert_hf_to_gguf.py (get_vocab_base_pre, 2025/2026 master) and
src/llama-vocab.cpp. Only entries for architectures edgerun converts (llama, qwen2) are kept.
"""

from __future__ import annotations

import json
from hashlib import sha256
from pathlib import Path
from typing import Any

from edgerun.errors import EdgerunError

# Verbatim from llama.cpp's get_vocab_base_pre.
CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis "
    "concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 "
    "កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български "
    "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? "
    "'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)

# sha256(str(token ids of CHKTXT)) -> llama.cpp pre-tokenizer name; comment: the model it came from.
CHKHSH: dict[str, str] = {
    # meta-llama/Meta-Llama-3-8B (Llama 3.x)
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    # HuggingFaceTB/SmolLM-135M (SmolLM / SmolLM2 share the tokenizer)
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    # Qwen/Qwen1.5-7B (Qwen2 / Qwen2.5 share the tokenizer)
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
    # Qwen/Qwen3-Embedding-0.6B
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",
    # deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B (qwen2 architecture)
    "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5": "deepseek-r1-qwen",
    # deepseek-ai/deepseek-llm-7b-base (llama architecture)
    "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754": "deepseek-llm",
    # deepseek-ai/deepseek-coder-6.7b-base (llama architecture)
    "347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821": "deepseek-coder",
    # tiiuae/Falcon3-7B-Base (llama architecture)
    "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e": "falcon3",
    # openai-community/gpt2
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
}

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


def chkhsh(tokenizer: Any, add_special_tokens: bool = True) -> str:
    """llama.cpp's tokenizer hash: sha256 of str(token ids of CHKTXT)."""
    ids = tokenizer.encode(CHKTXT, add_special_tokens=add_special_tokens)
    return sha256(str(ids).encode()).hexdigest()


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
    """The `tokenizer.ggml.pre` name for an HF byte-level BPE tokenizer.

    The hash is tried with and without special tokens: llama.cpp hashes `encode(CHKTXT)` with
    them, and a checkpoint rebuilt from a GGUF may add a BOS the original did not.
    Raises EdgerunError when neither the hash nor the pre-tokenizer shape is known.
    """
    for with_special in (True, False):
        if (name := CHKHSH.get(chkhsh(tokenizer, with_special))) is not None:
            return name
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
        f"the tokenizer's pre-tokenizer {list(steps)} (hash {chkhsh(tokenizer)[:16]}) matches "
        "no llama.cpp pre-tokenizer edgerun knows",
        "add its llama.cpp name to exporters/gguf/pretokenizers.py, or export to ONNX",
    )
