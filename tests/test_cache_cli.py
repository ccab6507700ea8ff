"""`edgerun list` / `edgerun rm` over a model cache made with the real marker writer."""

from __future__ import annotations

import json
import os
from pathlib import Path

from click.testing import CliRunner

from edgerun.cli import cli
from edgerun.core.home import models_dir
from edgerun.sources.cache_entry import write_marker
from edgerun.sources.describe import human_bytes


def _entry(name: str, source: str, weights: bytes = b"w" * 2048) -> Path:
    tmp = models_dir() / name
    tmp.mkdir()
    (tmp / "config.json").write_text('{"model_type": "llama"}')
    (tmp / "model.safetensors").write_bytes(weights)
    (tmp / "tokenizer.json").write_text("{}")
    write_marker(tmp, {"source": source, "kind": "hub", "revision": None, "gguf_sha256": None})
    return tmp


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_list_shows_each_entry_with_size_and_a_damaged_one_says_why() -> None:
    small = _entry("org--small", "org/small")
    size = human_bytes(sum(p.stat().st_size for p in small.iterdir()))
    broken = _entry("org--broken", "org/broken")
    (broken / "model.safetensors").write_bytes(b"short")
    result = run("list")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["name", "source", "kind", "size", "modified", "state"]
    assert lines[1].split()[:3] == ["org--broken", "org/broken", "hub"]
    assert lines[1].endswith("damaged: model.safetensors has 5 bytes, 2048 when it was pulled")
    assert lines[2].split()[:5] == ["org--small", "org/small", "hub", *size.split()]
    assert lines[2].endswith("ok")
    data = json.loads(run("list", "--json").output)
    assert [(d["name"], d["problem"] is None) for d in data] == [
        ("org--broken", False),
        ("org--small", True),
    ]


def test_list_of_an_empty_cache_says_how_to_fill_it() -> None:
    assert run("list").output == "no models cached (edgerun pull MODEL adds one)\n"


def test_rm_by_name_or_source_and_refuses_unknown_names() -> None:
    first = _entry("org--a", "org/a")
    second = _entry("org--b", "org/b")
    assert run("rm", "org--a").output.startswith("removed org--a (")
    assert not first.exists()
    assert run("rm", "org/b").exit_code == 0 and not second.exists()
    assert [p.name for p in models_dir().iterdir()] == []
    result = run("rm", "org/zzz")
    assert result.exit_code == 2
    assert result.stderr == (
        "error: no cached model called 'org/zzz' (cached: none (edgerun list))\n"
    )


def test_rm_never_follows_a_link_out_of_the_cache(tmp_path: Path) -> None:
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("x")
    os.symlink(outside, models_dir() / "linked")
    assert run("list", "--json").output.strip() == "[]"
    assert run("rm", "linked").exit_code == 2
    assert (outside / "keep.txt").is_file()
