"""Model code never runs: transformers' remote-code loader refused, and checkpoint views without
a model's own Python files.

A Hugging Face checkpoint may carry Python files and point at them from `auto_map` in its
config.json or tokenizer_config.json; transformers imports them when asked to trust remote code,
and llama.cpp's converter asks for some architectures and tokenizers. edgerun passes
`trust_remote_code=False` to every load it makes, and around the loads that other tools make
(llama.cpp's converter, onnxruntime-genai's builder) it replaces the two functions of
`transformers.dynamic_module_utils` that copy and import such a file with ones that refuse: a
`trust_remote_code=True` anywhere inside fails with one line instead of running the file.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgerun.core.errors import EdgerunError

# The files transformers reads an `auto_map` from.
AUTO_MAP_FILES = (
    "config.json",
    "tokenizer_config.json",
    "processor_config.json",
    "preprocessor_config.json",
)
HINT = (
    "edgerun never runs a model's own code: export a checkpoint of an architecture transformers"
    " implements (`edgerun export --list-architectures`)"
)


class RemoteCodeRefused(EdgerunError):
    """Something asked transformers to import Python code shipped with a model."""


def _refuse(*args: Any, **kwargs: Any) -> Any:
    names = [str(a) for a in args if isinstance(a, (str, os.PathLike))]
    raise RemoteCodeRefused(
        f"the checkpoint asks to run its own Python code ({', '.join(names)[:120] or 'auto_map'})",
        HINT,
    )


@contextlib.contextmanager
def no_remote_code() -> Iterator[None]:
    """While inside, transformers refuses to copy or import a model's Python files (raising
    RemoteCodeRefused) even where a caller passes trust_remote_code=True. A no-op without
    transformers."""
    try:
        from transformers import dynamic_module_utils as dmu
    except ImportError:
        yield
        return
    saved = {name: getattr(dmu, name) for name in ("get_cached_module_file", "get_class_in_module")}
    for name in saved:
        setattr(dmu, name, _refuse)
    try:
        yield
    finally:
        for name, original in saved.items():
            setattr(dmu, name, original)


def code_free_view(checkpoint: Path, view: Path, replaced: dict[str, bytes] | None = None) -> Path:
    """A directory `view/<checkpoint name>` showing the checkpoint's regular files as links, less
    every Python file and every `auto_map` (so no loader inside can find model code), with the
    files named in `replaced` written with the given bytes instead. Returns its path."""
    shown = view / checkpoint.name  # the converter names the model after its directory
    shown.mkdir()
    replaced = dict(replaced or {})
    for name in AUTO_MAP_FILES:
        if name not in replaced and (checkpoint / name).is_file():
            stripped = _without_auto_map(checkpoint / name)
            if stripped is not None:
                replaced[name] = stripped
    for item in checkpoint.iterdir():
        if item.name in replaced or item.suffix == ".py" or not item.is_file():
            continue
        (shown / item.name).symlink_to(item.resolve())
    for name, data in replaced.items():
        (shown / name).write_bytes(data)
    return shown


def _without_auto_map(path: Path) -> bytes | None:
    """The JSON object in `path` without its `auto_map`, or None when it has none."""
    from edgerun.core.untrusted import read_json

    data = read_json(path, "fix or remove the file")
    if not isinstance(data, dict) or "auto_map" not in data:
        return None
    data.pop("auto_map")
    return json.dumps(data, ensure_ascii=False, indent=2).encode("utf-8")
