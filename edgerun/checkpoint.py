"""What makes a directory a complete Hugging Face checkpoint: config, weights, tokenizer."""

from __future__ import annotations

from pathlib import Path

from edgerun.errors import EdgerunError

WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


def check_checkpoint_dir(path: Path) -> None:
    """Raise EdgerunError naming the first missing piece of an HF checkpoint directory, or a
    config.json that is not a JSON object."""
    from edgerun.untrusted import read_json_object

    if not (path / "config.json").is_file():
        raise EdgerunError(f"{path} has no config.json", "point to a Hugging Face model directory")
    read_json_object(path / "config.json", "point to a Hugging Face model directory")
    if not any(any(path.glob(g)) for g in WEIGHT_GLOBS):
        raise EdgerunError(
            f"{path} has no weights (model.safetensors or pytorch_model.bin)",
            "save the model with save_pretrained() first",
        )
    has_bpe = (path / "vocab.json").is_file() and (path / "merges.txt").is_file()
    if not has_bpe and not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise EdgerunError(
            f"{path} has no tokenizer files (tokenizer.json, tokenizer.model or vocab.json + merges.txt)",
            "save the tokenizer with tokenizer.save_pretrained() into the same directory",
        )
