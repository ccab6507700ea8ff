"""``python -m benchmarks.scale_models NAME OUT``: a random-weight checkpoint with the real shape
of a model people ship (issue 20's cost curve), made locally: no download.

The weights are written tensor by tensor into bf16 safetensors shards (at most SHARD_BYTES each,
with the index transformers writes), never as a whole model in memory: the 8B shape needs no
more RAM than one shard. Values follow transformers' default initialisation (normal(0, 0.02)
for matrices and embeddings, ones for norm weights, zeros for biases), seeded per tensor name.
The tokenizer comes from another checkpoint (default: the smollm2-135m demo, pulled through
edgerun): with ``--vocab tokenizer`` the embedding has that tokenizer's size (SmolLM2's 49,152:
the 0.40B "Qwen2.5-0.5B shape" of the issue's first measurement); with ``--vocab real``
(default) it has the real model's, the extra rows never indexed by the tokenizer.
"""

from __future__ import annotations

import json
import math
import shutil
import zlib
from pathlib import Path
from typing import Any

import click

SHARD_BYTES = 2 << 30
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

_LLAMA3_ROPE = {"rope_type": "llama3", "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}  # fmt: skip
# name -> (model_type, config fields): the shapes of the released configs.
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "smollm2-135m": ("llama", {
        "hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
        "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152,
        "tie_word_embeddings": True, "max_position_embeddings": 8192, "rope_theta": 100000.0,
    }),
    "qwen2.5-0.5b": ("qwen2", {
        "hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14,
        "num_key_value_heads": 2, "intermediate_size": 4864, "vocab_size": 151936,
        "tie_word_embeddings": True, "max_position_embeddings": 32768, "rope_theta": 1000000.0,
    }),
    "llama-3.2-1b": ("llama", {
        "hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32,
        "num_key_value_heads": 8, "intermediate_size": 8192, "vocab_size": 128256, "head_dim": 64,
        "tie_word_embeddings": True, "max_position_embeddings": 131072, "rope_theta": 500000.0,
        "rope_scaling": {**_LLAMA3_ROPE, "factor": 32.0},
    }),
    "qwen2.5-1.5b": ("qwen2", {
        "hidden_size": 1536, "num_hidden_layers": 28, "num_attention_heads": 12,
        "num_key_value_heads": 2, "intermediate_size": 8960, "vocab_size": 151936,
        "tie_word_embeddings": True, "max_position_embeddings": 32768, "rope_theta": 1000000.0,
    }),
    "llama-3.2-3b": ("llama", {
        "hidden_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 24,
        "num_key_value_heads": 8, "intermediate_size": 8192, "vocab_size": 128256, "head_dim": 128,
        "tie_word_embeddings": True, "max_position_embeddings": 131072, "rope_theta": 500000.0,
        "rope_scaling": {**_LLAMA3_ROPE, "factor": 32.0},
    }),
    "llama-3.1-8b": ("llama", {
        "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256,
        "tie_word_embeddings": False, "max_position_embeddings": 131072, "rope_theta": 500000.0,
        "rope_scaling": {**_LLAMA3_ROPE, "factor": 8.0},
    }),
}  # fmt: skip


def _value(name: str, shape: tuple[int, ...]) -> Any:
    """One tensor as transformers initialises it, seeded by its name, in bf16."""
    import torch

    if name.endswith("norm.weight"):
        return torch.ones(shape, dtype=torch.bfloat16)
    if name.endswith(".bias"):
        return torch.zeros(shape, dtype=torch.bfloat16)
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    return (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)


def _write_shards(model: Any, out: Path) -> None:
    """Every parameter of the meta `model`, written shard by shard, with the index."""
    from safetensors.torch import save_file

    names = [(n, tuple(p.shape)) for n, p in model.state_dict().items()]
    if model.config.tie_word_embeddings:
        names = [(n, s) for n, s in names if n != "lm_head.weight"]
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in names:
        nbytes = 2 * math.prod(shape)
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        if len(shards) == 1:
            file = "model.safetensors"
        tensors = {name: _value(name, shape) for name, shape in shard}
        save_file(tensors, str(out / file), metadata={"format": "pt"})
        total += sum(t.numel() * 2 for t in tensors.values())
        weight_map.update({name: file for name in tensors})
        del tensors
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def make_checkpoint(name: str, out: Path, tokenizer_dir: Path, vocab: str = "real") -> Path:
    """Write the random-weight checkpoint of shape `name` (a key of SHAPES) into `out`."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    model_type, fields = SHAPES[name]
    fields = dict(fields)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if vocab == "tokenizer":
        fields["vocab_size"] = len(tokenizer)
    config = AutoConfig.for_model(
        model_type,
        **fields,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        torch_dtype="bfloat16",
    )
    config.architectures = [AutoModelForCausalLM._model_mapping[type(config)].__name__]
    out.mkdir(parents=True, exist_ok=True)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    config.save_pretrained(out)
    for file in TOKENIZER_FILES:
        if (tokenizer_dir / file).is_file():
            shutil.copyfile(tokenizer_dir / file, out / file)
    _write_shards(model, out)
    return out


@click.command()
@click.argument("name", type=click.Choice(sorted(SHAPES)))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--vocab", type=click.Choice(["real", "tokenizer"]), default="real",
              help="Embedding rows: the real model's, or the tokenizer's.")  # fmt: skip
@click.option("--tokenizer-from", type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="Checkpoint whose tokenizer to copy (default: the smollm2-135m demo).")  # fmt: skip
def main(name: str, out: Path, vocab: str, tokenizer_from: Path | None) -> None:
    """Write the random-weight checkpoint NAME into OUT."""
    if tokenizer_from is None:
        from edgerun.sources.resolve import resolve

        tokenizer_from = resolve("smollm2-135m").path
    path = make_checkpoint(name, out, tokenizer_from, vocab)
    click.echo(f"{name}: {path}")


if __name__ == "__main__":
    main()
