"""What makes a directory a complete Hugging Face checkpoint: config, weights, tokenizer; and
that every file edgerun or a converter reads from it lies inside it."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from edgerun.core.errors import EdgerunError

WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin", "model.safetensors.index.json")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
# Files an artifact needs besides the model: tokenizer, generation defaults, chat template, config.
SIDE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
OUTSIDE_HINT = "copy the file into the checkpoint directory: edgerun reads nothing outside it"


def check_checkpoint_dir(path: Path) -> None:
    """Raise EdgerunError naming the first missing piece of an HF checkpoint directory, a
    config.json that is not a JSON object, or a file that leads out of the directory."""
    from edgerun.core.untrusted import read_json_object

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
            "save the tokenizer with save_pretrained() into the same directory",
        )
    check_contained(path)


def check_contained(path: Path) -> None:
    """EdgerunError when a file that edgerun, transformers or llama.cpp's converter reads from
    the checkpoint leads out of it: a `weight_map` entry of a weight index that is absolute or
    climbs with '..', or a side or weight file that is a symbolic link to elsewhere."""
    names = {f.name for g in WEIGHT_GLOBS for f in path.glob(g)}
    names.update(
        name for name in SIDE_FILES if (path / name).is_symlink() or (path / name).exists()
    )
    for index in WEIGHT_INDEXES:
        if (path / index).is_file():
            names.update(_weight_map(path, index))
    for name in sorted(names):
        checkpoint_file(path, name, "weight or side file")


def _weight_map(path: Path, index: str) -> set[str]:
    """The files the weight index `index` maps tensors to."""
    from edgerun.core.untrusted import json_type, read_json_object

    hint = "re-save the checkpoint with save_pretrained()"
    data = read_json_object(path / index, hint)
    weight_map: Any = data.get("weight_map")
    if not isinstance(weight_map, dict):
        raise EdgerunError(
            f"{path / index}: 'weight_map' must be an object, not {json_type(weight_map)}", hint
        )
    files: set[str] = set()
    for name in weight_map.values():
        if isinstance(name, str) and name in files:
            continue
        checkpoint_file(path, name, f"{index}: weight_map entry")
        files.add(name)
        if not (path / name).is_file():
            raise EdgerunError(f"{path / index}: weight_map names {name!r}, which is missing", hint)
    return files


def checkpoint_file(root: Path, name: Any, what: str = "file") -> Path:
    """`root / name`, refused (EdgerunError) unless it stays inside the checkpoint `root` (see
    edgerun.core.untrusted.contained). A Hugging Face cache snapshot (`snapshots/<rev>/`) links its
    files into the repository's `blobs/`: those links are its own layout and allowed."""
    from edgerun.core.untrusted import contained

    try:
        return contained(root, name, f"{root}: {what}", OUTSIDE_HINT)
    except EdgerunError:
        if not _hub_blob(Path(root), name):
            raise
        return Path(root) / name


def _hub_blob(root: Path, name: Any) -> bool:
    """Whether `root/name` is a top-level link of an HF cache snapshot into its repo's blobs."""
    if not isinstance(name, str) or len(PurePosixPath(name).parts) != 1 or name in (".", ".."):
        return False
    link = root / name
    if not link.is_symlink() or root.resolve().parent.name != "snapshots":
        return False
    blobs = root.resolve().parent.parent / "blobs"
    try:
        return link.resolve().parent == blobs and link.resolve().is_file()
    except (OSError, RuntimeError):
        return False
