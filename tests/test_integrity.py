"""The integrity check on load: small files hashed, large files sampled, --verify hashes all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgerun.backends.base import resolve_artifact
from edgerun.cli import cli
from edgerun.core import integrity
from edgerun.core.errors import EdgerunError
from edgerun.core.manifest import MANIFEST_NAME, file_entries, read_manifest, write_manifest

MiB = 1 << 20


def artifact(root: Path, model_bytes: int) -> Path:
    """A GGUF-family artifact with a model file of `model_bytes` and a small tokenizer file."""
    root.mkdir()
    (root / "model.gguf").write_bytes(bytes(range(256)) * (model_bytes // 256))
    (root / "tokenizer.json").write_text('{"model": {}}')
    write_manifest(
        root,
        {"format": "gguf-q4_0", "family": "gguf", "model_file": "model.gguf", "files": []},
    )
    manifest = read_manifest(root)
    write_manifest(root, {**manifest, "files": file_entries(root)})
    return root


def flip(path: Path, offset: int) -> None:
    """A same-size edit: one byte changed."""
    with open(path, "r+b") as fh:
        fh.seek(offset)
        old = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([old[0] ^ 0xFF]))


def test_same_size_edit_of_a_small_model_is_refused_by_default(tmp_path: Path) -> None:
    art = artifact(tmp_path / "a", 4096)
    resolve_artifact(art)
    flip(art / "model.gguf", 1000)
    result = CliRunner().invoke(cli, ["run", str(art), "hi"])
    assert result.exit_code == 2
    assert result.output == (
        f"error: {art / 'model.gguf'} has changed since export: its sha256 differs from the"
        " manifest (re-export or re-copy the artifact; `edgerun verify` lists every changed file)\n"
    )


def test_edited_tokenizer_is_refused(tmp_path: Path) -> None:
    art = artifact(tmp_path / "a", 4096)
    (art / "tokenizer.json").write_text('{"model": []}')
    with pytest.raises(EdgerunError, match="tokenizer.json has changed since export"):
        resolve_artifact(art)


def test_large_files_get_block_hashes(tmp_path: Path) -> None:
    art = artifact(tmp_path / "a", 12 * MiB)
    (entry,) = [f for f in read_manifest(art)["files"] if f["name"] == "model.gguf"]
    assert entry["blocks"]["size"] == MiB and len(entry["blocks"]["sha256"]) == 12
    assert integrity.block_size(5000 * MiB) == 8 * MiB  # at most 1024 blocks


@pytest.mark.parametrize("block", [0, 11])
def test_first_and_last_blocks_are_always_checked(tmp_path: Path, block: int) -> None:
    art = artifact(tmp_path / "a", 12 * MiB)
    flip(art / "model.gguf", block * MiB + 7)
    with pytest.raises(EdgerunError, match=f"block {block} of 12 differs from the manifest"):
        resolve_artifact(art)


def test_a_sampled_block_edit_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    art = artifact(tmp_path / "a", 12 * MiB)
    flip(art / "model.gguf", 5 * MiB + 3)
    monkeypatch.setattr(integrity, "SAMPLED_BLOCKS", 12)  # sample every block
    with pytest.raises(EdgerunError, match="block 5 of 12 differs"):
        resolve_artifact(art)


def test_verify_catches_what_sampling_misses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    art = artifact(tmp_path / "a", 12 * MiB)
    flip(art / "model.gguf", 5 * MiB + 3)
    monkeypatch.setattr(integrity, "SAMPLED_BLOCKS", 0)  # first and last block only
    resolve_artifact(art)  # the documented limit of the quick check
    with pytest.raises(EdgerunError, match="model.gguf has changed since export: its sha256"):
        resolve_artifact(art, verify=True)
    result = CliRunner().invoke(cli, ["run", str(art), "hi", "--verify"])
    assert result.exit_code == 2 and "its sha256 differs" in result.output


def test_malformed_block_record_is_refused(tmp_path: Path) -> None:
    art = artifact(tmp_path / "a", 12 * MiB)
    manifest = json.loads((art / MANIFEST_NAME).read_text())
    manifest["files"][0]["blocks"]["sha256"].pop()
    (art / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(EdgerunError, match=r"files\[0\].blocks does not match a file of"):
        read_manifest(art)
