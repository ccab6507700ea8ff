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


def build_tiny_model(
    name: str, out_dir: Path, seed: int = 0, spec: tuple[str, dict[str, Any]] | None = None
) -> Path:
    """Build the tiny model `name` (a key of SPECS, or any name with its own `spec`: model_type
    and config overrides) with its tokenizer into `out_dir`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    model_type, overrides = spec or SPECS[name]
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out_dir)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = AutoConfig.for_model(model_type, **{**_COMMON, **overrides, "eos_token_id": eos})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Random init with std 0.02 gives near-uniform logits; widen it so greedy decoding and
    # quantization error are visible in tests.
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.08)
    model.eval()
    model.generation_config = GenerationConfig(bos_token_id=0, eos_token_id=eos)
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir
