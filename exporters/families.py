"""The model families edgerun exports, as data: one entry per family, one line each.

Every entry is tested (tests/test_families.py generates its tests from `FAMILIES`): a tiny random
checkpoint of the family, with the knobs in `covers` set away from their defaults, exports to
onnx-fp32, onnx-int4, gguf-f16 and gguf-q8_0 and is compared with transformers.

`genai` lists the rope scalings under which the family's onnxruntime-genai graph was proven equal
to transformers by that test; only those get genai's builder under `--builder auto` (the builder's
own list is wider, and wrong for some: see the comments). Two entries may share a model_type (one
per tokenizer kind); the first holds the builder facts, and both name the same transformers
class (`architecture`, the one a checkpoint's config.json must name). A family not listed here is still tried (optimum's exporter, llama.cpp's converter) and reported as
untested. A family llama.cpp runs wrongly for some checkpoints has a check in
edgerun.exporters.gguf.quirks that refuses those before any work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgerun.core.errors import EdgerunError

FORMATS = ("onnx-fp32", "onnx-int4", "gguf-f16", "gguf-q8_0")
# optimum-onnx 0.1 has no config for these MoE families, and the graph traced with a dense
# family's config does not run in onnxruntime (measured: mixtral, qwen2_moe, granitemoe)
_NO_MOE_ONNX = "optimum-onnx cannot export it (no config; the traced MoE graph does not run)"


@dataclass(frozen=True)
class Family:
    name: str
    model_type: str  # config.json "model_type"
    # the one class its checkpoints must name in config.json "architectures": transformers'
    # causal-LM class for model_type (tests check it against transformers' own table)
    architecture: str
    covers: str  # what its tiny test checkpoint sets: the family's quirks under test
    # rope scaling types ("default": none) under which onnxruntime-genai's graph is proven equal to
    # transformers for this family; --builder auto picks genai's builder only for those
    genai: tuple[str, ...] = ()
    gguf: str | None = None  # None: llama.cpp converts and runs it; else why not
    onnx: str | None = None  # None: an ONNX builder exports it; else why not
    tokenizer: str = "bpe"  # "bpe" (byte-level BPE) or "spm" (SentencePiece with byte fallback)
    moe: bool = False  # mixture of experts: routing flips widen the quantized formats' error

    def formats(self) -> tuple[str, ...]:
        """The formats of FORMATS this family exports to."""
        refused = {"gguf": self.gguf, "onnx": self.onnx}
        return tuple(f for f in FORMATS if refused[f.split("-")[0]] is None)


FAMILIES: tuple[Family, ...] = (
    # genai's llama graph with llama3 rope scaling: proven once the builder reads the original
    # context from rope_scaling (exporters/onnx/genai_rope.py; without it, logits off by 0.83)
    Family("llama", "llama", "LlamaForCausalLM", "llama3 rope scaling, GQA, tied head", genai=("default", "llama3")),
    Family("llama-spm", "llama", "LlamaForCausalLM", "Llama 2 style SentencePiece vocabulary, untied head", tokenizer="spm"),
    Family("mistral", "mistral", "MistralForCausalLM", "GQA, SentencePiece vocabulary", tokenizer="spm", genai=("default",)),
    Family("qwen2", "qwen2", "Qwen2ForCausalLM", "q/k/v biases, GQA, tied head", genai=("default",)),
    Family("qwen3", "qwen3", "Qwen3ForCausalLM", "q/k norms, head_dim apart from hidden/heads", genai=("default",)),
    Family("phi3", "phi3", "Phi3ForCausalLM", "longrope scaling, fused qkv and gate_up", tokenizer="spm", genai=("longrope",)),
    Family("phi", "phi", "PhiForCausalLM", "partial rotary (0.5), LayerNorm, parallel block, lm_head bias"),
    Family("gemma", "gemma", "GemmaForCausalLM", "embedding scale, (1 + w) RMSNorm, MQA", tokenizer="spm", genai=("default",)),
    # genai's gemma2 graph: logits off by up to 2.2 on the tiny checkpoint (soft-capping, window)
    Family("gemma2", "gemma2", "Gemma2ForCausalLM", "attention and final soft-capping, sliding window", tokenizer="spm"),
    Family("gemma3", "gemma3_text", "Gemma3ForCausalLM", "sliding window, local/global rope bases, q/k norms", tokenizer="spm", genai=("default",)),
    Family("granite", "granite", "GraniteForCausalLM", "embedding, residual, attention and logits multipliers", genai=("default",)),
    Family("olmo2", "olmo2", "Olmo2ForCausalLM", "q/k norms, post-norms"),
    Family("stablelm", "stablelm", "StableLmForCausalLM", "partial rotary (0.25), LayerNorm, qkv bias"),
    Family("starcoder2", "starcoder2", "Starcoder2ForCausalLM", "LayerNorm, biases, GELU MLP"),
    Family("gpt-neox", "gpt_neox", "GPTNeoXForCausalLM", "partial rotary (0.25), parallel residual, fused qkv"),
    Family("falcon", "falcon", "FalconForCausalLM", "multi-query, parallel attention (Falcon-7B layout)"),
    Family("smollm3", "smollm3", "SmolLM3ForCausalLM", "NoPE on every 4th layer"),
    # genai's OLMo graph computes RMSNorm where OLMo has a weightless LayerNorm (argmax 0.60)
    Family("olmo", "olmo", "OlmoForCausalLM", "weightless LayerNorm, clipped qkv"),
    Family("cohere", "cohere", "CohereForCausalLM", "logit scale, parallel block, LayerNorm, tied head"),
    Family("gpt2", "gpt2", "GPT2LMHeadModel", "learned positions, Conv1D projections, LayerNorm"),
    Family("starcoder", "gpt_bigcode", "GPTBigCodeForCausalLM", "multi-query attention, learned positions"),
    Family("exaone4", "exaone4", "Exaone4ForCausalLM", "post-norms, q/k norms (qwen3's ONNX config)"),
    Family("olmoe", "olmoe", "OlmoeForCausalLM", "mixture of experts, 4 experts top-2 (olmo2's ONNX config)", moe=True),
    Family("mixtral", "mixtral", "MixtralForCausalLM", "mixture of experts, 4 experts top-2", moe=True, onnx=_NO_MOE_ONNX),
    Family("qwen2-moe", "qwen2_moe", "Qwen2MoeForCausalLM", "mixture of experts with a shared expert", moe=True, onnx=_NO_MOE_ONNX),
    Family("granitemoe", "granitemoe", "GraniteMoeForCausalLM", "mixture of experts, granite multipliers", moe=True, onnx=_NO_MOE_ONNX),
    Family("qwen3-moe", "qwen3_moe", "Qwen3MoeForCausalLM", "mixture of experts, normalised top-k, q/k norms", moe=True,
           gguf="llama.cpp's logits differ from transformers' (relative error 0.12 in f16 on the tiny checkpoint)"),
)  # fmt: skip

BY_NAME: dict[str, Family] = {family.name: family for family in FAMILIES}

# model_type -> the class its checkpoints must name in config.json "architectures", derived from
# FAMILIES (families sharing a model_type name the same class: tests/test_model_trust.py).
# llama.cpp's converter picks its code by this field, not by model_type, so a checkpoint naming
# another class (a "DreamModel" whose converter asks for the model's own tokenizer code) is
# refused before anything reads it.
ARCHITECTURES: dict[str, str] = {f.model_type: f.architecture for f in FAMILIES}


def for_config(config: dict[str, Any]) -> Family | None:
    """The registered family of a config.json dict (None: not a tested family)."""
    model_type = config.get("model_type")
    return next((f for f in FAMILIES if f.model_type == model_type), None)


def expected_architecture(model_type: Any) -> str | None:
    """The class a checkpoint of `model_type` must name: the registry's, else transformers' own
    causal-LM class for an unregistered model type (None: transformers implements none)."""
    if not isinstance(model_type, str):
        return None
    if model_type in ARCHITECTURES:
        return ARCHITECTURES[model_type]
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except ImportError:  # no transformers: only the registered model types are known
        return None
    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    return name if isinstance(name, str) else None


def check_architecture(config: dict[str, Any]) -> None:
    """EdgerunError unless config.json's "architectures", and that of any sub-config (a
    text_config, llm_config, ...), is exactly the one class its model_type maps to
    (expected_architecture). The tools pick their code by these fields (llama.cpp's converter by
    "architectures", a sub-config's first; transformers by model_type): a mismatch could run code
    the registry never vetted, or a model's own Python files."""
    model_type = config.get("model_type")
    expected = expected_architecture(model_type)
    if expected is None:
        raise EdgerunError(
            f"model type {str(model_type)[:60]!r} has no causal-LM class in transformers",
            "edgerun exports architectures transformers implements itself; it never runs a"
            " model's own code (`edgerun export --list-architectures`)",
        )
    for where, declared in _declared_architectures(config):
        if declared != [expected]:
            raise EdgerunError(
                f"config.json{where} names the architectures {str(declared)[:80]}; a {model_type}"
                f" checkpoint must name ['{expected}']",
                "the converters pick their code by this field and edgerun never runs other code:"
                " fix config.json, or export the original checkpoint",
            )


def _declared_architectures(config: dict[str, Any], where: str = "", depth: int = 0) -> Any:
    """(where, value) of "architectures" in `config` (also when missing, at the top) and in
    every nested object, a few levels deep."""
    if not depth or "architectures" in config:
        yield where, config.get("architectures")
    for key, value in config.items():
        if isinstance(value, dict) and depth < 4:
            yield from _declared_architectures(value, f"{where}.{key}", depth + 1)


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
    formats ("onnx", "gguf"), or this checkpoint has a knob llama.cpp would run wrongly."""
    family = for_config(config)
    reason = None if family is None else {"gguf": family.gguf, "onnx": family.onnx}.get(prefix)
    if family is not None and reason is not None:
        other = "ONNX" if prefix == "gguf" else "GGUF"
        raise EdgerunError(
            f"{prefix.upper()} export does not support {family.name}: {reason}",
            f"export to {other} instead; `edgerun export --list-architectures` shows each family's",
        )
    if prefix == "gguf":
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
                "onnx": "yes" if family.onnx is None else f"no: {family.onnx}",
                "formats": list(family.formats()),
                "tokenizer": family.tokenizer,
                "covers": family.covers,
            }
        )
    return rows
