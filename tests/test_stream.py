"""The layer-by-layer reference (edgerun.exporters.stream) against the whole model in memory:
the same log-probs on every kind of family, sharded checkpoints, several batches, and an
export whose validation numbers equal those of the in-memory reference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from edgerun.exporters import stream  # noqa: E402
from edgerun.exporters.formats import ExportOptions  # noqa: E402
from edgerun.exporters.reference import (  # noqa: E402
    eval_token_ids,
    load_model,
    read_eval_text,
    streamed_reference,
    torch_logits_fn,
)
from edgerun.exporters.validate import Reference, Thresholds  # noqa: E402
from tests.tiny_models import build_family_model, build_tiny_model  # noqa: E402

LOGPROB_TOL = 1e-5  # float32 log-probs; measured max difference 5e-7 (1.2e-6 for mixtral)
# One family per way a model's forward differs: tied head and llama3 rope (llama), soft-capping
# and sliding windows (gemma2), a base model not named by base_model_prefix (gemma3), learned
# positions under "transformer." with Conv1D projections (gpt2), a router output (mixtral).
FAMILIES = ("llama", "gemma2", "gemma3", "gpt2", "mixtral")


def _both(path: Path, scratch: Path, window: int = 128) -> tuple[Reference, Reference]:
    from transformers import AutoTokenizer

    text = read_eval_text(None)[:3000]
    ids = eval_token_ids(AutoTokenizer.from_pretrained(path), text)
    streamed = streamed_reference(path, ids, text, window, scratch)
    whole = Reference(torch_logits_fn(load_model(path)), ids, text, window=window)
    return streamed, whole


def _assert_equal(streamed: Reference, whole: Reference) -> None:
    assert len(streamed.windows) == len(whole.windows) > 1
    for i, chunk in enumerate(whole.windows):
        np.testing.assert_array_equal(streamed.windows[i], chunk)
        np.testing.assert_allclose(
            streamed.logprobs[i], whole.logprobs[i], atol=LOGPROB_TOL, rtol=0
        )


@pytest.mark.parametrize("family", FAMILIES)
def test_streamed_reference_equals_the_whole_model(family: str, tmp_path: Path) -> None:
    path = build_family_model(family, tmp_path / family)
    streamed, whole = _both(path, tmp_path)
    _assert_equal(streamed, whole)
    assert (tmp_path / "reference-logprobs.npy").is_file()  # on disk, float32
    assert np.load(tmp_path / "reference-logprobs.npy", mmap_mode="r").dtype == np.float32


def test_sharded_checkpoint_in_small_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoModelForCausalLM

    path = build_tiny_model("llama-untied", tmp_path / "one")
    sharded = tmp_path / "sharded"
    model = AutoModelForCausalLM.from_pretrained(path)
    model.save_pretrained(sharded, max_shard_size="100KB")
    for f in path.iterdir():
        if f.name.startswith("tokenizer") or f.name == "special_tokens_map.json":
            (sharded / f.name).write_bytes(f.read_bytes())
    index = json.loads((sharded / stream.INDEX_FILE).read_text())
    assert len(set(index["weight_map"].values())) > 1
    monkeypatch.setattr(stream, "BATCH_TOKENS", 200)  # one window a batch: several batches
    streamed, whole = _both(sharded, tmp_path)
    _assert_equal(streamed, whole)


def test_a_weight_missing_from_the_checkpoint_is_one_error(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from edgerun.core.errors import EdgerunError

    path = build_tiny_model("llama-untied", tmp_path / "m")
    tensors = load_file(path / "model.safetensors")
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(EdgerunError, match=r"no tensor model\.layers\.1\.mlp\.down_proj\.weight"):
        _both(path, tmp_path)


def test_export_validation_equals_the_in_memory_reference(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, short_eval_text: Path
) -> None:
    """The export streams its reference and never loads the whole fp32 model (the default
    builder for llama reads the checkpoint itself; q4-mixed's Fisher runs layer by layer); its
    validation numbers are those of today's in-memory reference."""
    from edgerun.exporters import reference as reference_module
    from edgerun.exporters.formats import family_of
    from edgerun.exporters.pipeline import export

    def refuse(path: Path) -> None:
        raise AssertionError("the export loaded the whole fp32 model")

    monkeypatch.setattr(reference_module, "load_model", refuse)
    gate = Thresholds(max_ppl_ratio=2.0, max_mean_kl=1.0, min_top1_agreement=0.0)
    options = ExportOptions(
        eval_text=short_eval_text, probe=False, progress=False, thresholds=gate, max_memory="64G"
    )
    results = export(str(tiny_llama), "onnx-fp32,onnx-int4", tmp_path / "out", options)
    monkeypatch.undo()
    text = short_eval_text.read_text(encoding="utf-8")
    from transformers import AutoTokenizer

    ids = eval_token_ids(AutoTokenizer.from_pretrained(tiny_llama), text)
    whole = Reference(torch_logits_fn(load_model(tiny_llama)), ids, text)
    for result in results:
        assert result.written and result.manifest is not None
        family = family_of(result.format)
        want = whole.score(family.logits_fn(result.path, result.manifest), gate).to_json()
        got = result.validation
        assert got is not None
        for key in ("ppl_ref", "ppl", "ppl_ratio", "mean_kl", "top1_agreement", "tokens"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), (result.format, key)
    int4 = results[1].manifest
    assert int4 is not None
    assert int4["quant"]["recipe"]["calibration"]["sensitivity"].endswith("layer by layer")
    assert int4["export"]["memory_estimate"]["calibration"] == "fisher-layers"
