"""Tiny random Hugging Face causal LMs built from configs, with tokenizers trained on the spot.

No network. Each spec is a few layers with hidden size 64, so export and validation run in seconds;
the architectures cover what the exporters must handle: llama (tied embeddings, like SmolLM2),
qwen2 (attention biases, grouped-query attention) and llama with untied embeddings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

VOCAB_SIZE = 384
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_COMMON: dict[str, Any] = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-5,
    "bos_token_id": 0,
    "eos_token_id": 0,
}

# name -> (model_type, config overrides); one line per architecture quirk under test.
SPECS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("llama", {"num_key_value_heads": 4, "tie_word_embeddings": True}),
    "qwen2": ("qwen2", {"num_key_value_heads": 2, "tie_word_embeddings": True}),
    "llama-untied": ("llama", {"num_key_value_heads": 2, "tie_word_embeddings": False}),
}

# One tiny checkpoint per family of edgerun.exporters.families, with the knobs that make the family
# what it is set away from their defaults (tests/test_families.py checks that every registered
# family has one): registry name -> (model_type, config overrides, tokenizer kind).
# Tokenizer kinds: "bpe" (byte-level BPE, GPT-2 / Llama 3 / Qwen style) or "spm" (SentencePiece
# with byte fallback: Llama 2 / Gemma / Phi-3 style, a tokenizer.model beside tokenizer.json).
_LONGROPE = {"short_factor": [1.0 + i / 16 for i in range(8)], "long_factor": [2.0 + i / 8 for i in range(8)]}  # fmt: skip
FAMILY_SPECS: dict[str, tuple[str, dict[str, Any], str]] = {
    "llama": ("llama", {
        "num_key_value_heads": 2, "tie_word_embeddings": True,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
    }, "bpe"),
    "llama-spm": ("llama", {"num_key_value_heads": 4, "tie_word_embeddings": False}, "spm"),
    "mistral": ("mistral", {"num_key_value_heads": 2, "sliding_window": None}, "spm"),
    "qwen2": ("qwen2", {"num_key_value_heads": 2, "tie_word_embeddings": True}, "bpe"),
    "qwen3": ("qwen3", {"num_key_value_heads": 2, "head_dim": 32, "tie_word_embeddings": True}, "bpe"),
    "phi3": ("phi3", {
        # llama.cpp picks long factors by context size (all positions: above the original
        # context), transformers by sequence length: an original context of 4096, the context
        # edgerun.load allocates by default, keeps both on the short factors in validation and at
        # run time, as for Phi-3-mini-128k
        "num_key_value_heads": 2, "original_max_position_embeddings": 4096,
        "max_position_embeddings": 16384, "pad_token_id": None,
        "rope_scaling": {"type": "longrope", **_LONGROPE},
    }, "spm"),
    # llama.cpp's phi2 takes the feed-forward width as 4 x hidden, as in the real phi-1/1.5/2
    "phi": ("phi", {"num_key_value_heads": 4, "partial_rotary_factor": 0.5, "intermediate_size": 256}, "bpe"),
    "gemma": ("gemma", {"num_key_value_heads": 1, "head_dim": 16}, "spm"),
    "gemma2": ("gemma2", {
        "num_key_value_heads": 2, "head_dim": 16, "final_logit_softcapping": 5.0,
        "attn_logit_softcapping": 20.0, "sliding_window": 16, "query_pre_attn_scalar": 16,
    }, "spm"),
    "gemma3": ("gemma3_text", {
        "num_key_value_heads": 2, "head_dim": 16, "sliding_window": 16, "query_pre_attn_scalar": 16,
        "rope_local_base_freq": 10000.0, "rope_theta": 1000000.0,
    }, "spm"),
    "granite": ("granite", {
        "num_key_value_heads": 2, "embedding_multiplier": 12.0, "residual_multiplier": 0.22,
        "attention_multiplier": 0.0625, "logits_scaling": 4.0,
    }, "bpe"),
    "olmo2": ("olmo2", {"num_key_value_heads": 4}, "bpe"),
    "stablelm": ("stablelm", {
        "num_key_value_heads": 4, "partial_rotary_factor": 0.25, "use_qkv_bias": True,
    }, "bpe"),
    "starcoder2": ("starcoder2", {"num_key_value_heads": 2, "sliding_window": None}, "bpe"),
    "gpt-neox": ("gpt_neox", {"rotary_pct": 0.25, "use_parallel_residual": True}, "bpe"),
    # as transformers saves it: FalconConfig writes num_kv_heads = num_attention_heads, which
    # multi_query overrides (llama.cpp's converter is given 1 by exporters/gguf/quirks/falcon.py)
    "falcon": ("falcon", {
        "new_decoder_architecture": False, "multi_query": True, "parallel_attn": True,
        "bias": False, "alibi": False,
    }, "bpe"),
    # NoPE on every 4th layer (the real family's interval; llama.cpp fixes it at 4): 4 layers
    "smollm3": ("smollm3", {"num_key_value_heads": 2, "num_hidden_layers": 4, "pad_token_id": None}, "bpe"),
    "olmo": ("olmo", {"num_key_value_heads": 4, "clip_qkv": 8.0}, "bpe"),
    "cohere": ("cohere", {"num_key_value_heads": 2, "logit_scale": 0.5}, "bpe"),
    # the real gpt2 config.json carries n_ctx, which llama.cpp's converter reads
    "gpt2": ("gpt2", {"n_positions": 256, "n_ctx": 256}, "bpe"),
    "starcoder": ("gpt_bigcode", {"n_positions": 256, "multi_query": True}, "bpe"),
    "exaone4": ("exaone4", {"num_key_value_heads": 2}, "bpe"),
    "olmoe": ("olmoe", {"num_key_value_heads": 4, "num_experts": 4, "num_experts_per_tok": 2}, "bpe"),
    "mixtral": ("mixtral", {
        "num_key_value_heads": 2, "num_local_experts": 4, "num_experts_per_tok": 2,
        "sliding_window": None,
    }, "bpe"),
    "qwen2-moe": ("qwen2_moe", {
        "num_key_value_heads": 2, "num_experts": 4, "num_experts_per_tok": 2,
        "moe_intermediate_size": 64, "shared_expert_intermediate_size": 64,
        "decoder_sparse_step": 1, "mlp_only_layers": [],
    }, "bpe"),
    "granitemoe": ("granitemoe", {"num_key_value_heads": 2, "num_local_experts": 4, "num_experts_per_tok": 2}, "bpe"),
    "qwen3-moe": ("qwen3_moe", {
        "num_key_value_heads": 2, "num_experts": 4, "num_experts_per_tok": 2, "head_dim": 16,
        "moe_intermediate_size": 64, "decoder_sparse_step": 1, "mlp_only_layers": [],
        "norm_topk_prob": True,
    }, "bpe"),
}  # fmt: skip


_CORPUS = """The quick brown fox jumps over the lazy dog near the river bank.
In 1969, 600 million people watched the first landing on the Moon; it lasted 21 hours.
"Where are you going?" she asked. "To the market, then home," he said, and smiled.
Prices rose by 3.5% in March, 2.75% in April and 4% in May, according to the report.
for i in range(10):
    total += values[i] * 2  # accumulate
class Node:
    def __init__(self, left=None, right=None):
        self.left, self.right = left, right
"""


def training_corpus() -> list[str]:
    """Text to train the fixture tokenizers on: prose, digits, code, Unicode, runs of spaces."""
    extra = [
        "Hello, world! 12345 67890 3.14159",
        "Ünïcödé — naïve café, 東京, Привет, emoji 🙂",
        "spaces:    four   three  two one",
    ]
    return (_CORPUS.splitlines() + extra) * 20


def build_tokenizer(out_dir: Path) -> Any:
    """Train a byte-level BPE tokenizer (GPT-2 / SmolLM2 style) and save it as an HF fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )
    fast.save_pretrained(out_dir)
    return fast


def build_spm_tokenizer(out_dir: Path, dummy_prefix: bool = True) -> Any:
    """Train a SentencePiece BPE model with byte fallback and save it as tokenizer.model plus the
    HF fast tokenizer converted from it: with a dummy prefix (a "▁" before the text) like Llama 2,
    Mistral and Phi-3, or without like Gemma."""
    import io

    import sentencepiece as spm
    from transformers import LlamaTokenizerFast

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_corpus()), model_writer=model, vocab_size=VOCAB_SIZE,
        model_type="bpe", byte_fallback=True, character_coverage=1.0, split_digits=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, user_defined_symbols=SPECIAL_TOKENS,
        add_dummy_prefix=dummy_prefix, normalization_rule_name="identity", remove_extra_whitespaces=False,
        minloglevel=2,
    )  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.model").write_bytes(model.getvalue())
    fast = LlamaTokenizerFast(
        vocab_file=str(out_dir / "tokenizer.model"), add_bos_token=True, add_prefix_space=dummy_prefix,
        eos_token="<|im_end|>", chat_template=CHAT_TEMPLATE,
    )  # fmt: skip
    fast.save_pretrained(out_dir)
    return fast


def build_tiny_model(
    name: str,
    out_dir: Path,
    seed: int = 0,
    spec: tuple[str, dict[str, Any]] | None = None,
    tokenizer_kind: str = "bpe",
) -> Path:
    """Build the tiny model `name` (a key of SPECS, or any name with its own `spec`: model_type
    and config overrides) with its tokenizer ("bpe" or "spm") into `out_dir`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    model_type, overrides = spec or SPECS[name]
    kind = tokenizer_kind
    out_dir.mkdir(parents=True, exist_ok=True)
    if kind == "spm":
        tokenizer = build_spm_tokenizer(out_dir, dummy_prefix=not model_type.startswith("gemma"))
    else:
        tokenizer = build_tokenizer(out_dir)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    bos = tokenizer.bos_token_id
    config = AutoConfig.for_model(
        model_type, **{**_COMMON, **overrides, "eos_token_id": eos, "bos_token_id": bos}
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Random init with std 0.02 gives near-uniform logits; widen it so greedy decoding and
    # quantization error are visible in tests.
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.08)
    model.eval()
    model.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=eos)
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def build_family_model(
    name: str, out_dir: Path, without_rope_scaling: bool = False, tokenizer_json_only: bool = False
) -> Path:
    """Build the tiny checkpoint of the registered family `name` (a key of FAMILY_SPECS); with
    `without_rope_scaling`, the same family with its rope scaling removed; with
    `tokenizer_json_only`, a SentencePiece family saved as a fine-tune with a fast tokenizer
    only: no tokenizer.model (see drop_tokenizer_model)."""
    model_type, overrides, kind = FAMILY_SPECS[name]
    if without_rope_scaling:
        overrides = {k: v for k, v in overrides.items() if k != "rope_scaling"}
    build_tiny_model(name, out_dir, spec=(model_type, overrides), tokenizer_kind=kind)
    if tokenizer_json_only:
        drop_tokenizer_model(out_dir)
    return out_dir


def drop_tokenizer_model(checkpoint: Path) -> None:
    """Remove tokenizer.model, and `add_prefix_space` from tokenizer_config.json: transformers
    rebuilds the fast tokenizer from tokenizer.model when that key is set, and a checkpoint
    saved without tokenizer.model (Gemma's, Phi-3's) does not carry it."""
    import json

    (checkpoint / "tokenizer.model").unlink()
    path = checkpoint / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config.pop("add_prefix_space", None)
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
