"""Manifests are untrusted: paths stay inside the artifact, wrong shapes are one-line errors."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from edgerun.backends.base import resolve_artifact
from edgerun.cli import cli
from edgerun.cli.info import _render
from edgerun.core.errors import EdgerunError
from edgerun.core.integrity import sha256_file
from edgerun.core.manifest import MANIFEST_NAME, read_manifest, verify
from edgerun.sources.describe import describe
from tests.fuzz import FUZZ, hypothesis

st = hypothesis.strategies
runner = CliRunner()


def make_artifact(root: Path, **overrides: Any) -> Path:
    """A minimal GGUF artifact directory whose manifest passes every check."""
    root.mkdir(parents=True, exist_ok=True)
    model = root / "model.gguf"
    model.write_bytes(b"GGUF" + b"\0" * 60)
    manifest = {
        "schema_version": 1,
        "format": "gguf-q4_0",
        "family": "gguf",
        "precision": "q4_0",
        "builder": "gguf-py",
        "model_file": "model.gguf",
        "files": [{"name": "model.gguf", "bytes": 64, "sha256": sha256_file(model)}],
        "validation": None,
        **overrides,
    }
    (root / MANIFEST_NAME).write_text(json.dumps(manifest))
    return root


def test_good_manifest_is_read(tmp_path: Path) -> None:
    art = make_artifact(tmp_path / "a")
    assert read_manifest(art)["model_file"] == "model.gguf"
    assert resolve_artifact(art).model_file == art / "model.gguf"


@pytest.mark.parametrize(
    "name", ["/etc/passwd", "../outside/model.gguf", "sub/../../x", "C:\\x", "\\\\host\\share"]
)
def test_model_file_outside_the_artifact_is_refused(tmp_path: Path, name: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "model.gguf").write_bytes(b"GGUF" + b"\0" * 60)
    art = make_artifact(tmp_path / "a", model_file=name)
    for args in (["run", str(art), "hi"], ["info", str(art)], ["verify", str(art)]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 2, (args, result.output)
        assert result.output == (
            f"error: {art / MANIFEST_NAME}: model_file {name!r} points outside {art}"
            " (re-export the artifact, or re-copy it from where it was made)\n"
        )


def test_files_entry_outside_is_refused_before_any_stat(tmp_path: Path) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"x" * 10)
    entry = {"name": "../secret.bin", "bytes": 10, "sha256": "0" * 64}
    art = make_artifact(tmp_path / "a")
    manifest = json.loads((art / MANIFEST_NAME).read_text())
    manifest["files"].append(entry)
    (art / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(EdgerunError, match=r"files\[1\] '../secret.bin' points outside"):
        resolve_artifact(art)


def test_symlink_out_of_the_artifact_is_refused(tmp_path: Path) -> None:
    elsewhere = make_artifact(tmp_path / "elsewhere")
    art = make_artifact(tmp_path / "a")
    (art / "model.gguf").unlink()
    (art / "model.gguf").symlink_to(elsewhere / "model.gguf")
    with pytest.raises(EdgerunError, match=r"points outside .* \(symbolic link\)"):
        resolve_artifact(art)


def test_symlink_inside_the_artifact_is_fine(tmp_path: Path) -> None:
    art = make_artifact(tmp_path / "a")
    (art / "weights").mkdir()
    (art / "model.gguf").rename(art / "weights" / "model.gguf")
    (art / "model.gguf").symlink_to(art / "weights" / "model.gguf")
    assert resolve_artifact(art).model_file == art / "model.gguf"


WRONG_SHAPES = {
    "a number": "42",
    "a list": "[1, 2]",
    "a string": '"edgerun"',
    "null": "null",
    "files as a string": {"files": "model.gguf"},
    "files entry a string": {"files": ["model.gguf"]},
    "entry without sha256": {"files": [{"name": "model.gguf", "bytes": 64}]},
    "entry with a bad sha256": {"files": [{"name": "model.gguf", "bytes": 64, "sha256": "x"}]},
    "entry with bytes as a string": {
        "files": [{"name": "model.gguf", "bytes": "64", "sha256": "0" * 64}]
    },
    "entry with a null name": {"files": [{"name": None, "bytes": 1, "sha256": "0" * 64}]},
    "model_file a number": {"model_file": 3},
    "model_file empty": {"model_file": ""},
    "format a list": {"format": ["gguf"]},
    "context_length a string": {"context_length": "2048"},
    "context_length negative": {"context_length": -1},
    "validation a list": {"validation": [1]},
    "validation with a string ratio": {"validation": {"ppl_ratio": "1.0", "passed": True}},
    "schema_version a string": {"schema_version": "1"},
    "schema_version true": {"schema_version": True},
    "source a string": {"source": "hub"},
}


@pytest.mark.parametrize("case", sorted(WRONG_SHAPES))
def test_wrong_shape_is_one_line_error(tmp_path: Path, case: str) -> None:
    value = WRONG_SHAPES[case]
    art = make_artifact(tmp_path / "a", **(value if isinstance(value, dict) else {}))
    if isinstance(value, str):
        (art / MANIFEST_NAME).write_text(value)
    result = runner.invoke(cli, ["info", str(art)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\xff\xfe{}", "is not UTF-8 text (byte 0)"),
        (b"[" * 100_000 + b"]" * 100_000, "is not JSON edgerun can read (RecursionError)"),
        (b'{"schema_version": ' + b"1" * 5000 + b"}", "is not JSON edgerun can read (ValueError)"),
        (b'{"a": ', "is not valid JSON (Expecting value)"),
    ],
)
def test_unreadable_manifest_is_one_line_error(tmp_path: Path, raw: bytes, message: str) -> None:
    art = make_artifact(tmp_path / "a")
    (art / MANIFEST_NAME).write_bytes(raw)
    with pytest.raises(EdgerunError) as info:
        read_manifest(art)
    assert str(info.value) == f"{art / MANIFEST_NAME} {message} (re-export the artifact)"


def test_validation_with_nulls_renders(tmp_path: Path) -> None:
    nulls = {"ppl_ratio": None, "mean_kl": None, "top1_agreement": None, "passed": None}
    art = make_artifact(tmp_path / "a", validation=nulls)
    result = runner.invoke(cli, ["info", str(art)])
    assert result.exit_code == 0, result.output
    assert "validation: FAILED (ppl ratio n/a, mean KL n/a, top-1 n/a)" in result.output


def test_non_integer_context_in_config_is_one_line_error(tmp_path: Path) -> None:
    from edgerun.backends.select import _model_context

    art = make_artifact(tmp_path / "a", context_length=None)
    (art / "config.json").write_text('{"max_position_embeddings": "lots"}')
    with pytest.raises(EdgerunError, match="context length 'lots' in config.json"):
        _model_context(resolve_artifact(art))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=20,
)
KEYS = ["schema_version", "format", "family", "model_file", "files", "validation", "context_length"]
names = st.sampled_from(["model.gguf", "../x", "/etc/passwd", "", "a/../../b", "sub/m.gguf"])
file_entries = st.fixed_dictionaries(
    {}, optional={"name": names | json_values, "bytes": json_values, "sha256": json_values}
)
manifests = st.fixed_dictionaries(
    {"schema_version": st.just(1) | json_values, "format": st.just("gguf") | json_values},
    optional={
        "family": st.just("gguf") | json_values,
        "model_file": names | json_values,
        "files": st.lists(file_entries | json_values, max_size=3) | json_values,
        "validation": st.dictionaries(
            st.sampled_from(["ppl_ratio", "mean_kl", "top1_agreement", "passed"]), json_values
        )
        | json_values,
        "context_length": json_values,
    },
)


@FUZZ
@hypothesis.given(manifests | json_values)
def test_fuzz_manifest_reader(manifest: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        art = make_artifact(Path(tmp) / "a")
        (art / MANIFEST_NAME).write_text(json.dumps(manifest))
        _read_everything(art)


@FUZZ
@hypothesis.given(st.binary(max_size=200))
def test_fuzz_manifest_bytes(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        art = make_artifact(Path(tmp) / "a")
        (art / MANIFEST_NAME).write_bytes(raw)
        _read_everything(art)


def _read_everything(art: Path) -> None:
    """Every reader of a manifest: a result or EdgerunError, and nothing outside `art` is read."""
    for read in (read_manifest, resolve_artifact, verify, lambda a: _render(describe(a))):
        try:
            read(art)
        except EdgerunError as exc:
            assert "\n" not in str(exc)
    assert os.listdir(art.parent) == ["a"]


@pytest.mark.parametrize("edit", ["block-hash", "file-block"])
def test_verify_and_load_agree_on_block_hashes(tmp_path: Path, edit: str) -> None:
    """One check for both: a hand-edited block hash (the file intact) and a changed byte in a
    block that load samples are reported by `verify` as loudly as load refuses them."""
    from edgerun.core.manifest import file_entries, write_manifest

    art = tmp_path / "art"
    art.mkdir()
    (art / "model.gguf").write_bytes(os.urandom(9 << 20))  # large: block hashes, sampled on load
    manifest = {"format": "gguf-f16", "family": "gguf", "model_file": "model.gguf"}
    write_manifest(art, {**manifest, "files": file_entries(art)})
    assert verify(art).passed
    resolve_artifact(art)
    data = json.loads((art / MANIFEST_NAME).read_text())
    if edit == "block-hash":  # the first block is checked on every load
        data["files"][0]["blocks"]["sha256"][0] = "0" * 32
        (art / MANIFEST_NAME).write_text(json.dumps(data))
    else:  # same size, one byte of the last block changed, manifest untouched
        with open(art / "model.gguf", "r+b") as fh:
            fh.seek((9 << 20) - 5)
            fh.write(b"\xff\x00\xff\x00\xff")
    for full in (False, True):
        with pytest.raises(EdgerunError, match="model.gguf has changed since export"):
            resolve_artifact(art, verify=full)
    report = verify(art)
    assert report.changed == ["model.gguf"] and not report.passed
    result = runner.invoke(cli, ["verify", str(art)])
    assert result.exit_code == 1 and result.stdout == "changed: model.gguf\n"


def test_a_huge_manifest_block_size_never_sizes_a_buffer(tmp_path: Path) -> None:
    from edgerun.core.integrity import file_problem

    art = tmp_path / "art"
    art.mkdir()
    (art / "w.bin").write_bytes(b"\1" * 100)
    entry = {"name": "w.bin", "bytes": 100, "sha256": sha256_file(art / "w.bin")}
    blocks = {"size": 1 << 60, "sha256": ["0" * 32]}
    assert file_problem(art, {**entry, "blocks": blocks}, full=True) == (
        "block 0 of 1 differs from the manifest"
    )
