"""The runtime API over the ONNX Runtime backend on the tiny fixtures: equality with PyTorch,
sampling, stop handling, context limits, bad inputs, model info, close / reload."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import edgerun
from edgerun.core.errors import EdgerunError
from edgerun.core.manifest import file_entries, read_manifest, write_manifest
from edgerun.text.sampling import Sampler, SamplingParams
from tests.runtime_helpers import PROFILE, export_artifact, torch_greedy, torch_logits, torch_model
from tests.tiny_models import SPECS

PROMPTS = [[7], [5, 9], [12, 40, 41, 3, 200, 17, 99, 301, 6], list(range(10, 50))]
BUILDERS = ["optimum", *(["genai"] if importlib.util.find_spec("onnxruntime_genai") else [])]
# every tiny model through every builder (genai's builder takes the llama and qwen2 families)
CASES = [f"{name}/{builder}" for name in sorted(SPECS) for builder in BUILDERS]


@pytest.fixture(scope="module")
def onnx_fp32(
    tiny_model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Each tiny model exported with each ONNX builder: optimum's graph (past/present KV
    ping-pong) and, where installed, onnxruntime-genai's (shared-buffer KV), both run by edgerun's
    ORT loop."""
    root = tmp_path_factory.mktemp("onnx")
    return {
        f"{name}/{builder}": export_artifact(
            ckpt, "onnx-fp32", root / name / builder, builder=builder
        )
        for name, ckpt in tiny_model_dirs.items()
        for builder in BUILDERS
    }


@pytest.fixture(scope="module")
def llama_onnx(onnx_fp32: dict[str, Path]) -> Path:
    return onnx_fp32["llama/optimum"]


@pytest.fixture
def model(llama_onnx: Path) -> edgerun.runtime.model.Model:
    with edgerun.load(llama_onnx, PROFILE) as m:
        yield m


@pytest.mark.parametrize("case", CASES)
def test_greedy_tokens_equal_pytorch(
    case: str, onnx_fp32: dict[str, Path], tiny_model_dirs: dict[str, Path]
) -> None:
    name = case.split("/")[0]
    reference = torch_model(tiny_model_dirs[name])
    with edgerun.load(onnx_fp32[case], PROFILE) as m:
        assert m.info.backend == "onnxruntime"
        for prompt in PROMPTS:
            got = [c.token_id for c in m.generate(prompt, max_tokens=12, ignore_eos=True)]
            assert got == torch_greedy(reference, prompt, 12), (name, len(prompt))
            assert m.last_stats.generated_tokens == 12
            assert m.last_stats.finish_reason == "length"


@pytest.mark.parametrize("case", CASES)
def test_step_logits_equal_pytorch(
    case: str, onnx_fp32: dict[str, Path], tiny_model_dirs: dict[str, Path]
) -> None:
    """Prefill then one decode step per token, against a full no-cache forward pass: checks the
    KV ping-pong, positions and masks over a non-repetitive sequence."""
    ids = [int(i) for i in np.random.default_rng(1).integers(3, 384, 30)]
    expected = torch_logits(torch_model(tiny_model_dirs[case.split("/")[0]]), ids)
    with edgerun.load(onnx_fp32[case], PROFILE) as m:
        backend = m._backend
        assert backend is not None
        rows = [backend.prefill(ids[:5], len(ids)).copy()]
        rows += [backend.decode(t).copy() for t in ids[5:]]
    assert np.abs(np.stack(rows) - expected[4:]).max() < 1e-4


def test_seeded_sampling_follows_pytorch_logits(llama_onnx: Path, tiny_llama: Path) -> None:
    """A sampled (non-degenerate) continuation: replaying the same seeded sampler on PyTorch's
    logits picks the same tokens."""
    params = SamplingParams(temperature=1.0, top_k=50, top_p=0.95, seed=7)
    prompt = [5, 9, 13]
    with edgerun.load(llama_onnx, PROFILE) as m:
        got = [
            c.token_id
            for c in m.generate(
                prompt,
                max_tokens=24,
                ignore_eos=True,
                temperature=1.0,
                top_k=50,
                top_p=0.95,
                seed=7,
            )
        ]
    logits = torch_logits(torch_model(tiny_llama), prompt + got[:-1])
    replay = Sampler(params)
    assert [replay(logits[len(prompt) - 1 + i]) for i in range(24)] == got
    assert len(set(got)) > 5  # really sampled, not stuck on one token


def test_sampling_reproducible_with_a_seed(model: edgerun.runtime.model.Model) -> None:
    def draw(seed: int) -> list[int | None]:
        kw = dict(max_tokens=24, temperature=1.0, seed=seed, ignore_eos=True)
        return [c.token_id for c in model.generate("The quick brown", **kw)]

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


def test_streamed_text_is_the_decoded_text(model: edgerun.runtime.model.Model) -> None:
    chunks = list(
        model.generate(
            "Hello, world! 東京", max_tokens=20, temperature=0.9, seed=1, ignore_eos=True
        )
    )
    ids = [c.token_id for c in chunks]
    decoded = model.tokenizer.decode(ids, skip_special_tokens=True)
    # max_tokens may cut the last character's bytes: the stream leaves that half character out
    assert "".join(c.text for c in chunks) == decoded.rstrip("\ufffd")
    assert model.last_stats.prompt_tokens == len(model.tokenizer.encode("Hello, world! 東京"))


def test_stop_string_ends_generation_and_is_not_emitted(model: edgerun.runtime.model.Model) -> None:
    kw = dict(max_tokens=30, temperature=1.0, seed=5, ignore_eos=True)
    full = "".join(c.text for c in model.generate("In 1969", **kw))
    stop = full[10:13]
    assert len(full) > 13 and stop.strip()
    cut = full[: full.index(stop)]
    assert "".join(c.text for c in model.generate("In 1969", stop=[stop], **kw)) == cut
    assert model.last_stats.finish_reason == "stop"


def test_stop_token_id_and_eos(model: edgerun.runtime.model.Model) -> None:
    kw = dict(max_tokens=20, temperature=1.0, seed=2, ignore_eos=True)
    ids = [c.token_id for c in model.generate([5, 6], **kw)]
    target = ids[6]
    got = [c.token_id for c in model.generate([5, 6], stop=[target], **kw)]
    assert got == ids[: ids.index(target)]
    assert model.last_stats.finish_reason == "stop"
    # without ignore_eos the model's eos (<|im_end|>) ends generation and is not yielded
    eos = next(iter(model.tokenizer.eos_ids))
    model.tokenizer.eos_ids = frozenset({target})
    assert [c.token_id for c in model.generate([5, 6], **{**kw, "ignore_eos": False})] == got
    assert model.last_stats.finish_reason == "eos"
    assert eos == model.tokenizer._tok.token_to_id("<|im_end|>")


@pytest.mark.parametrize("max_tokens", [0, -3])
def test_max_tokens_must_be_positive(model: edgerun.runtime.model.Model, max_tokens: int) -> None:
    with pytest.raises(EdgerunError, match=f"max_tokens must be at least 1, got {max_tokens}"):
        model.generate("hi", max_tokens=max_tokens)


def test_library_errors_give_library_hints(
    model: edgerun.runtime.model.Model, llama_onnx: Path
) -> None:
    """A caller of the library is told the argument to change (max_tokens=1), not a CLI option;
    the CLI's wording travels beside it for the CLI to print."""
    with pytest.raises(EdgerunError) as info:
        model.generate("hi", max_tokens=0)
    assert str(info.value) == "max_tokens must be at least 1, got 0 (pass max_tokens=1 or more)"
    assert info.value.for_cli().endswith("(pass --max-tokens 1 or more)")
    with pytest.raises(EdgerunError) as info:
        model.generate(list(range(10, 300)), max_tokens=4)
    assert "--" not in str(info.value) and "truncate='left'" in str(info.value)
    with pytest.raises(EdgerunError) as info:
        model.generate("hi", seed=-1)
    assert "--" not in str(info.value) and "seed=0" in str(info.value)
    with pytest.raises(EdgerunError) as info:
        edgerun.load(llama_onnx, PROFILE, threads=0)
    assert (
        str(info.value) == "threads must be at least 1, got 0 (pass threads=1 or more, or omit it)"
    )


def test_settings_past_the_machine_or_the_model_warn(
    llama_onnx: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """threads=64 on a small machine and a context ten times the trained one load, with a
    warning each on model.info.warnings and stderr, instead of being accepted silently."""
    import os

    many = len(os.sched_getaffinity(0)) + 62
    with edgerun.load(llama_onnx, PROFILE, threads=many, context=2560) as m:
        assert m.info.threads == many and m.context_length == 2560
        warnings = m.info.warnings
    assert any(w.startswith(f"threads={many} is more than the ") for w in warnings)
    assert any(
        w.startswith("context=2560 is longer than the 256 positions the model was trained on")
        for w in warnings
    )
    assert f"warning: threads={many} is more" in capsys.readouterr().err
    with edgerun.load(llama_onnx, PROFILE, threads=1, context=256) as m:
        assert not any("threads=" in w or "context=" in w for w in m.info.warnings)


def test_prompt_longer_than_context(llama_onnx: Path) -> None:
    with edgerun.load(llama_onnx, PROFILE, context=16) as m:
        assert m.context_length == 16
        prompt = list(range(10, 30))
        with pytest.raises(
            EdgerunError,
            match=r"prompt \(20 tokens\) plus max_tokens \(4\) exceed the context length 16",
        ):
            m.generate(prompt, max_tokens=4)
        got = [c.token_id for c in m.generate(prompt, max_tokens=4, truncate="left")]
        assert m.last_stats.prompt_tokens == 12
        assert got == [c.token_id for c in m.generate(prompt[-12:], max_tokens=4)]


def test_model_info_reports_the_active_providers(model: edgerun.runtime.model.Model) -> None:
    info = model.info
    assert info.backend == "onnxruntime"
    assert info.providers == model._backend.session.get_providers() == ["CPUExecutionProvider"]
    assert info.profile_id == PROFILE and info.profile_reason == "chosen with --profile"
    assert info.format == "onnx-fp32" and info.manifest["format"] == "onnx-fp32"
    assert info.threads and info.threads >= 1
    assert json.loads(json.dumps(info.to_json()))["backend"] == "onnxruntime"


def test_auto_detected_profile_is_named(llama_onnx: Path) -> None:
    with edgerun.load(llama_onnx) as m:
        assert m.info.profile_id
        assert m.info.profile_reason.startswith("auto-detected")


def test_close_double_load_and_context_manager(llama_onnx: Path) -> None:
    first = edgerun.load(llama_onnx, PROFILE)
    second = edgerun.load(llama_onnx, PROFILE)
    a = [c.token_id for c in first.generate([5, 6, 7], max_tokens=8, ignore_eos=True)]
    first.close()
    first.close()  # idempotent
    with pytest.raises(EdgerunError, match="closed"):
        first.generate([5], max_tokens=2)
    assert [c.token_id for c in second.generate([5, 6, 7], max_tokens=8, ignore_eos=True)] == a
    with second:
        pass
    with pytest.raises(EdgerunError, match="closed"):
        second.generate([5], max_tokens=2)


def test_a_second_generate_invalidates_the_first(model: edgerun.runtime.model.Model) -> None:
    first = model.generate([5, 6], max_tokens=10, ignore_eos=True)
    next(first)
    assert len(list(model.generate([8], max_tokens=3, ignore_eos=True))) == 3
    with pytest.raises(EdgerunError, match="another generate"):
        next(first)


def test_closing_the_model_stops_a_running_generation(llama_onnx: Path) -> None:
    m = edgerun.load(llama_onnx, PROFILE)
    chunks = m.generate([5, 6], max_tokens=10, ignore_eos=True)
    next(chunks)
    m.close()
    with pytest.raises(EdgerunError, match="the model was closed"):
        next(chunks)


def test_token_ids_outside_the_vocabulary(model: edgerun.runtime.model.Model) -> None:
    with pytest.raises(EdgerunError, match="token id 384 is outside the vocabulary"):
        model.generate([5, 384])
    with pytest.raises(EdgerunError, match="the prompt is empty"):
        model.generate("")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_truncated_model_file(llama_onnx: Path, tmp_path: Path) -> None:
    art = _copy(llama_onnx, tmp_path / "art")
    data = (art / "model.onnx").read_bytes()
    (art / "model.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(EdgerunError, match=r"model.onnx is \d+ bytes but the manifest says \d+"):
        edgerun.load(art, PROFILE)
    # the same damage with a manifest rewritten to match: onnxruntime itself refuses
    manifest = read_manifest(art)
    write_manifest(art, {**manifest, "files": file_entries(art)})
    with pytest.raises(EdgerunError, match="onnxruntime cannot load .*model.onnx"):
        edgerun.load(art, PROFILE)


@pytest.mark.parametrize("name", ["garbage.onnx", "garbage.gguf"])
def test_corrupt_bare_files(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"\x00not a model\xff" * 100)
    backend = "onnxruntime" if name.endswith("onnx") else "llama.cpp"
    if name.endswith("gguf"):
        pytest.importorskip("llama_cpp")
    with pytest.raises(EdgerunError, match=f"{backend} cannot load"):
        edgerun.load(path, PROFILE)


def test_manifest_missing_or_newer(llama_onnx: Path, tmp_path: Path) -> None:
    art = _copy(llama_onnx, tmp_path / "art")
    manifest = json.loads((art / "edgerun.json").read_text())
    (art / "edgerun.json").write_text(json.dumps({**manifest, "schema_version": 99}))
    with pytest.raises(EdgerunError, match="schema version 99"):
        edgerun.load(art, PROFILE)
    (art / "edgerun.json").unlink()
    with pytest.raises(EdgerunError, match="is not an edgerun artifact"):
        edgerun.load(art, PROFILE)
    with pytest.raises(EdgerunError, match="does not exist"):
        edgerun.load(tmp_path / "nope", PROFILE)


def test_bare_onnx_file_with_its_tokenizer(llama_onnx: Path) -> None:
    with (
        edgerun.load(llama_onnx / "model.onnx", PROFILE) as bare,
        edgerun.load(llama_onnx, PROFILE) as art,
    ):
        assert bare.info.format == "onnx" and bare.info.artifact.endswith("model.onnx")
        assert bare.context_length == 256  # max_position_embeddings from config.json
        kw = dict(max_tokens=6, ignore_eos=True)
        assert [c.text for c in bare.generate("Hello", **kw)] == [
            c.text for c in art.generate("Hello", **kw)
        ]


def test_model_info_prints_as_one_line(model: edgerun.runtime.model.Model) -> None:
    """print(model.info) is what runs, one line; the manifest stays in to_json()."""
    text = str(model.info)
    assert "\n" not in text and len(text) < 400
    assert text.startswith(f"{model.info.format} (") and model.info.backend in text
    assert "manifest" not in repr(model.info) and model.info.to_json()["manifest"]
