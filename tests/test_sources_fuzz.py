"""Fuzz the source-side parsers: a checkpoint's config.json and a cache entry's marker. Any input
gives a result or one EdgerunError line, never another exception."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from edgerun.core.errors import EdgerunError
from edgerun.sources.cache_entry import SOURCE_MARKER, read_entry
from edgerun.sources.checkpoint import check_checkpoint_dir
from tests.fuzz import FUZZ, hypothesis

st = hypothesis.strategies
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
markers = st.fixed_dictionaries(
    {},
    optional={
        "kind": json_values,
        "revision": json_values,
        "gguf_sha256": json_values,
        "files": json_values
        | st.dictionaries(st.sampled_from(["config.json", "x", "../y"]), json_values),
    },
)


def _one_line(exc: EdgerunError) -> None:
    assert "\n" not in str(exc)


@FUZZ
@hypothesis.given(st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_fuzz_checkpoint_config(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp)
        (ckpt / "config.json").write_bytes(raw)
        (ckpt / "model.safetensors").write_bytes(b"\0" * 8)
        (ckpt / "tokenizer.json").write_text("{}")
        try:
            check_checkpoint_dir(ckpt)
        except EdgerunError as exc:
            _one_line(exc)


@FUZZ
@hypothesis.given(markers | json_values, st.booleans())
def test_fuzz_cache_marker(marker: Any, as_bytes: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        entry = Path(tmp) / "entry"
        entry.mkdir()
        (entry / "config.json").write_text("{}")
        raw = json.dumps(marker).encode()
        (entry / SOURCE_MARKER).write_bytes(raw[: len(raw) // 2] if as_bytes else raw)
        try:
            meta = read_entry(entry, "smollm2-135m")
        except EdgerunError as exc:
            _one_line(exc)
        else:
            assert isinstance(meta, dict) and isinstance(meta["kind"], str)
