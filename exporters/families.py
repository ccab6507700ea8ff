"""The model families edgerun exports, as data: one entry per family, one line each.

Every entry is tested (tests/test_families.py generates its tests from `FAMILIES`): a tiny random
checkpoint of the family, with the knobs in `covers` set away from their defaults, exports to
onnx-fp32, onnx-int4, gguf-f16 and gguf-q8_0 and is compared with transformers.

`genai` lists the rope scalings under which the family's onnxruntime-genai graph was proven equal
to transformers by that test; only those get genai's builder under `--builder auto` (the builder's
own list is wider, and wrong for some: see the comments). Two entries may share a model_type (one
per tokenizer kind); the first holds the builder facts. A family
not listed here is still tried (optimum's exporter, llama.cpp's converter) and reported as
untested. A family llama.cpp runs wrongly for some checkpoints has a check in
edgerun.exporters.gguf.quirks that refuses those before any work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgerun.errors import EdgerunError

FORMATS = ("onnx-fp32", "onnx-int4", "gguf-f16", "gguf-q8_0")


@dataclass(frozen=True)
class Family:
    name: str
    model_type: str  # config.json "model_type"
    covers: str  # what its tiny test checkpoint sets: the family's quirks under test
    # rope scaling types ("default": none) under which onnxruntime-genai's graph is proven equal to
    # transformers for this family; --builder auto picks genai's builder only for those
    genai: tuple[str, ...] = ()
    gguf: str | None = None  # None: llama.cpp converts and runs it; else why not
    tokenizer: str = "bpe"  # "bpe" (byte-level BPE) or "spm" (SentencePiece with byte fallback)


FAMILIES: tuple[Family, ...] = (
    # genai's llama graph with llama3 rope scaling: logits off by up to 0.83 (tiny checkpoint)
    Family("llama", "llama", "llama3 rope scaling, GQA, tied head", genai=("default",)),
    Family("llama-spm", "llama", "Llama 2 style SentencePiece vocabulary, untied head", tokenizer="spm"),
    Family("mistral", "mistral", "GQA, SentencePiece vocabulary", tokenizer="spm", genai=("default",)),
    Family("qwen2", "qwen2", "q/k/v biases, GQA, tied head", genai=("default",)),
    Family("qwen3", "qwen3", "q/k norms, head_dim apart from hidden/heads", genai=("default",)),
    Family("phi3", "phi3", "longrope scaling, fused qkv and gate_up", tokenizer="spm", genai=("longrope",)),
    Family("phi", "phi", "partial rotary (0.5), LayerNorm, parallel block, lm_head bias"),
    Family("gemma", "gemma", "embedding scale, (1 + w) RMSNorm, MQA", tokenizer="spm", genai=("default",)),
    # genai's gemma2 graph: logits off by up to 2.2 on the tiny checkpoint (soft-capping, window)
    Family("gemma2", "gemma2", "attention and final soft-capping, sliding window", tokenizer="spm"),
    Family("gemma3", "gemma3_text", "sliding window, local/global rope bases, q/k norms", tokenizer="spm", genai=("default",)),
    Family("granite", "granite", "embedding, residual, attention and logits multipliers", genai=("default",)),
    Family("olmo2", "olmo2", "q/k norms, post-norms"),
    Family("stablelm", "stablelm", "partial rotary (0.25), LayerNorm, qkv bias"),
    Family("starcoder2", "starcoder2", "LayerNorm, biases, GELU MLP"),
    Family("gpt-neox", "gpt_neox", "partial rotary (0.25), parallel residual, fused qkv"),
    Family("falcon", "falcon", "multi-query, parallel attention (Falcon-7B layout)"),
    Family("smollm3", "smollm3", "NoPE on every 4th layer"),
)  # fmt: skip

BY_NAME: dict[str, Family] = {family.name: family for family in FAMILIES}


def for_config(config: dict[str, Any]) -> Family | None:
    """The registered family of a config.json dict (None: not a tested family)."""
    model_type = config.get("model_type")
    return next((f for f in FAMILIES if f.model_type == model_type), None)


def rope_type(config: dict[str, Any]) -> str:
    """The rope scaling type of a config.json dict ("default" when it has none)."""
    rope = config.get("rope_scaling") or {}
    return str(rope.get("rope_type", rope.get("type", "default")))


def genai_proven(config: dict[str, Any]) -> bool:
    """Whether onnxruntime-genai's graph is proven equal to transformers for this family and
    its rope scaling."""
    family = for_config(config)
    return family is not None and rope_type(config) in family.genai


def check_format(config: dict[str, Any], prefix: str) -> None:
    """EdgerunError when the family is known not to export correctly to the `prefix` family of
    formats ("gguf"), or this checkpoint has a knob llama.cpp would run wrongly."""
    if prefix != "gguf":
        return
    family = for_config(config)
    if family is not None and family.gguf is not None:
        raise EdgerunError(
            f"GGUF export does not support {family.name}: {family.gguf}", "export to ONNX instead"
        )
    from edgerun.exporters.gguf.quirks import check

    check(config)


def table() -> list[dict[str, Any]]:
    """One row per family: formats, builders, what the test covers (for --list-architectures)."""
    rows = []
    for family in FAMILIES:
        rows.append(
            {
                "family": family.name,
                "model_type": family.model_type,
                "onnx_builder": f"genai ({', '.join(family.genai)})" if family.genai else "optimum",
                "gguf": "llama.cpp" if family.gguf is None else f"no: {family.gguf}",
                "formats": [f for f in FORMATS if not (f.startswith("gguf") and family.gguf)],
                "tokenizer": family.tokenizer,
                "covers": family.covers,
            }
        )
    return rows
