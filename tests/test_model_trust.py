"""A model directory is data: none of its Python runs (export to GGUF and ONNX, pull, info, the
converter's own remote-code loads), none of its files leads out of it, and a GGUF that cannot
generate token by token is refused before llama.cpp loads it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgerun.cli import cli
from edgerun.core.errors import EdgerunError

pytest.importorskip("torch")

# Imported by transformers only if something trusts the checkpoint's code: it leaves a marker.
EVIL = """import pathlib
pathlib.Path({marker!r}).write_text("model code ran")


class EvilTokenizer:
    pass


class EvilModel:
    pass
"""


def _hostile(src: Path, dest: Path, marker: Path, **config: object) -> Path:
    """A copy of `src` carrying evil.py, with auto_map entries pointing at it in config.json and
    tokenizer_config.json, and `config` merged into config.json."""
    shutil.copytree(src, dest)
    (dest / "evil.py").write_text(EVIL.format(marker=str(marker)))
    cfg = json.loads((dest / "config.json").read_text())
    cfg.update(auto_map={"AutoModelForCausalLM": "evil.EvilModel"}, **config)
    (dest / "config.json").write_text(json.dumps(cfg))
    tok = json.loads((dest / "tokenizer_config.json").read_text())
    tok["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    (dest / "tokenizer_config.json").write_text(json.dumps(tok))
    return dest


@pytest.fixture
def modules_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where transformers would copy a model's Python files (kept out of the user's cache)."""
    path = tmp_path / "hf-modules"
    monkeypatch.setenv("HF_MODULES_CACHE", str(path))
    return path


@pytest.mark.parametrize("fmt", ["gguf-f16", "onnx-fp32"])
def test_a_checkpoint_naming_another_architecture_is_refused_unrun(
    fmt: str, tiny_llama: Path, tmp_path: Path, modules_cache: Path
) -> None:
    marker = tmp_path / "marker"
    ckpt = _hostile(tiny_llama, tmp_path / "dream", marker, architectures=["DreamModel"])
    args = ["export", str(ckpt), "-f", fmt, "-o", str(tmp_path / "out")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: config.json")
    assert "['DreamModel']" in result.stderr and "['LlamaForCausalLM']" in result.stderr
    assert not marker.exists() and not (tmp_path / "out" / fmt).exists()


def test_pull_and_info_never_run_model_code(
    tiny_llama: Path, tmp_path: Path, modules_cache: Path
) -> None:
    marker = tmp_path / "marker"
    ckpt = _hostile(tiny_llama, tmp_path / "dream", marker, architectures=["DreamModel"])
    for args in (["pull", str(ckpt)], ["info", str(ckpt)], ["info", "--json", str(ckpt)]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
    assert not marker.exists() and not modules_cache.exists()


def test_a_sub_config_naming_another_architecture_is_refused() -> None:
    from edgerun.exporters.families import check_architecture

    good = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}
    check_architecture(good)
    for bad, where in (
        ({**good, "text_config": {"architectures": ["DreamModel"]}}, "config.json.text_config"),
        ({"model_type": "qwen2"}, "config.json names the architectures None"),
        ({"model_type": "dream", "architectures": ["DreamModel"]}, "model type 'dream'"),
    ):
        with pytest.raises(EdgerunError, match=where.replace(".", r"\.")):
            check_architecture(bad)


def test_transformers_refuses_model_code_inside_the_guard(
    tmp_path: Path, modules_cache: Path
) -> None:
    from transformers import AutoTokenizer

    from edgerun.sources.remote_code import RemoteCodeRefused, no_remote_code

    marker = tmp_path / "marker"
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "evil.py").write_text(EVIL.format(marker=str(marker)))
    auto_map = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    (ckpt / "tokenizer_config.json").write_text(json.dumps({"auto_map": auto_map}))
    (ckpt / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with no_remote_code(), pytest.raises(RemoteCodeRefused, match="its own Python code"):
        AutoTokenizer.from_pretrained(ckpt, trust_remote_code=True)
    assert not marker.exists() and not modules_cache.exists()


def test_the_gguf_converter_runs_with_remote_code_refused(
    tiny_llama: Path, tmp_path: Path, modules_cache: Path
) -> None:
    """A registered architecture whose tokenizer sends llama.cpp's converter down a
    trust_remote_code=True path (llama: tokenizer_class HybridDNATokenizer)."""
    pytest.importorskip("llama_cpp")
    from edgerun.exporters.gguf import converter
    from edgerun.exporters.gguf.convert import convert

    marker = tmp_path / "marker"
    ckpt = _hostile(tiny_llama, tmp_path / "ckpt", marker)
    tok = json.loads((ckpt / "tokenizer_config.json").read_text())
    (ckpt / "tokenizer_config.json").write_text(
        json.dumps({**tok, "tokenizer_class": "HybridDNATokenizer"})
    )
    with pytest.raises(EdgerunError, match="llama.cpp's converter failed") as info:
        convert(converter.ensure(), ckpt, tmp_path / "model.gguf", "f16")
    assert "\n" not in str(info.value)
    assert not marker.exists() and not (tmp_path / "model.gguf").exists()


def _outside(tmp_path: Path) -> Path:
    secret = tmp_path / "secret.json"
    secret.write_text('{"not": "yours"}')
    return secret


@pytest.mark.parametrize("case", ["side-file-link", "weight-map-climbs", "weight-map-absolute"])
def test_files_leading_out_of_the_checkpoint_are_refused(
    case: str, tiny_llama: Path, tmp_path: Path
) -> None:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_llama, ckpt)
    secret = _outside(tmp_path)
    if case == "side-file-link":
        (ckpt / "generation_config.json").unlink()
        (ckpt / "generation_config.json").symlink_to(secret)
    else:
        target = "../secret.json" if case == "weight-map-climbs" else str(secret)
        index = {"metadata": {}, "weight_map": {"lm_head.weight": target}}
        (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    for args in (
        ["pull", str(ckpt)],
        ["export", str(ckpt), "-f", "onnx-fp32", "-o", str(tmp_path / "o")],
    ):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, result.output
        assert result.stderr.count("\n") == 1 and "points outside" in result.stderr
    assert not (tmp_path / "o" / "onnx-fp32").exists()


def test_a_hub_cache_snapshot_links_into_its_blobs(tiny_llama: Path, tmp_path: Path) -> None:
    """The Hugging Face cache's own layout (snapshots/<rev>/ linking into ../../blobs/) is allowed."""
    repo = tmp_path / "models--org--tiny"
    snapshot, blobs = repo / "snapshots" / "abc123", repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for i, item in enumerate(sorted(tiny_llama.iterdir())):
        shutil.copyfile(item, blobs / f"blob{i}")
        (snapshot / item.name).symlink_to(Path("../../blobs") / f"blob{i}")
    result = CliRunner().invoke(cli, ["pull", str(snapshot)])
    assert result.exit_code == 0, result.output


def _gguf(path: Path, arch: str, **flags: bool) -> Path:
    gguf = pytest.importorskip("gguf")
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_context_length(64)
    for key, value in flags.items():
        writer.add_bool(f"{arch}.{key.replace('_', '.')}", value)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(
    ("arch", "flags", "why"),
    [
        ("dream", {}, "no KV cache in llama.cpp"),
        ("llada", {}, "no KV cache in llama.cpp"),
        ("llama", {"attention_causal": False}, "its attention is not causal"),
    ],
)
def test_a_gguf_that_cannot_generate_is_refused_before_loading(
    arch: str, flags: dict[str, bool], why: str, tmp_path: Path
) -> None:
    pytest.importorskip("llama_cpp")
    import numpy as np

    from edgerun.exporters.gguf import FAMILY

    path = _gguf(tmp_path / "model.gguf", arch, **flags)
    result = CliRunner().invoke(cli, ["run", str(path), "hello", "--max-tokens", "2"])
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and why in result.stderr
    assert f"holds a '{arch}' model, which does not generate text" in result.stderr
    logits = FAMILY.logits_fn(tmp_path, {"model_file": path.name})  # export validation
    with pytest.raises(EdgerunError, match="does not generate text token by token"):
        logits(np.arange(4, dtype=np.int64))


def test_a_causal_gguf_header_passes(tmp_path: Path) -> None:
    from edgerun.sources.gguf_header import check_causal

    check_causal(_gguf(tmp_path / "a.gguf", "llama"))
    check_causal(_gguf(tmp_path / "b.gguf", "llama", attention_causal=True))


def test_every_registered_family_names_transformers_own_class() -> None:
    """Each family's `architecture` is transformers' causal-LM class for its model_type (so two
    families sharing a model_type name the same one), and the derived table holds each."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from edgerun.exporters.families import ARCHITECTURES, FAMILIES, expected_architecture

    assert sorted(ARCHITECTURES) == sorted({f.model_type for f in FAMILIES})
    for family in FAMILIES:
        assert MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[family.model_type] == family.architecture, family
        assert expected_architecture(family.model_type) == family.architecture, family.name
