"""The family matrix, generated from the registry (edgerun.exporters.families): every family's tiny
random checkpoint exports to onnx-fp32, onnx-int4, gguf-f16 and gguf-q8_0 through the real
pipeline, and each artifact is compared with transformers on the same token ids.

Tolerances (tiny checkpoints: hidden 64, logits of magnitude ~3):
- onnx-fp32 (either builder): per-step logits within 1e-3 of transformers', and the same 12
  greedy tokens;
- gguf-f16: per-step logits within 0.05 (f16 weights and llama.cpp's f16 KV cache), and the same
  greedy tokens wherever transformers' top-2 margin exceeds twice that;
- onnx-int4 and gguf-q8_0: the looser check, the RMS of the logit error relative to the RMS of
  the centred reference logits, at most 0.35 (int4) / 0.05 (q8_0; 0.1 for mixtures of experts,
  whose routing flips under quantization). (Top-1 agreement says little
  here: random tiny models have near-flat logits.)
- genai's graph, under each rope scaling the registry says it is proven for: like onnx-fp32.
- onnx-fp32 and gguf-f16 run as users run them (edgerun.load, decoding with the KV cache): the
  same greedy tokens as transformers, as above.
- a SentencePiece family saved without tokenizer.model (TOKENIZER_JSON_ONLY) converts to GGUF with
  tokenizer parity on the eval text and runs as above.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("llama_cpp")

import edgerun  # noqa: E402
from edgerun.core.manifest import read_manifest  # noqa: E402
from edgerun.exporters import families  # noqa: E402
from edgerun.exporters.formats import family_of  # noqa: E402
from edgerun.exporters.pipeline import export  # noqa: E402
from edgerun.exporters.validate import Thresholds  # noqa: E402
from tests.tiny_models import build_family_model  # noqa: E402

FP32_TOL = 1e-3
F16_TOL = 0.05
MAX_REL_ERROR = {"onnx-int4": 0.35, "gguf-q8_0": 0.05}
MOE_MAX_REL_ERROR = {"onnx-int4": 0.35, "gguf-q8_0": 0.1}  # expert routing flips widen the error
GREEDY_STEPS = 12
# The pipeline's own gate is not what is under test here: the comparisons below are.
OPEN_GATE = Thresholds(max_ppl_ratio=10.0, max_mean_kl=10.0, min_top1_agreement=0.0)
NAMES = [family.name for family in families.FAMILIES]
# SentencePiece families whose fine-tunes often ship tokenizer.json alone
TOKENIZER_JSON_ONLY = ("gemma", "phi3")


class Matrix:
    """One family's exports and the transformers reference on fixed token ids."""

    def __init__(self, name: str, root: Path, eval_text: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.family = families.BY_NAME[name]
        self.src = build_family_model(name, root / "src")
        self.model = AutoModelForCausalLM.from_pretrained(self.src, dtype=torch.float32).eval()
        rng = np.random.default_rng(0)
        self.ids = rng.integers(5, self.model.config.vocab_size, size=48).astype(np.int64)
        self.results = {
            r.format: r
            for r in export(
                str(self.src),
                ",".join(families.FORMATS),
                root / "out",
                eval_text=eval_text,
                builder="optimum",
                thresholds=OPEN_GATE,
                progress=False,
                probe=False,
                window=128,
            )  # fmt: skip
        }
        # genai's graph under each rope scaling it is proven for: rope type -> (checkpoint, result)
        self.genai: dict[str, tuple[Path, Any]] = {}
        for rope in self.family.genai:
            src = self.src
            if families.rope_type(self.model.config.to_dict()) != rope:
                assert rope == "default", f"{name}: no tiny checkpoint with {rope} rope scaling"
                src = build_family_model(name, root / "src-default-rope", without_rope_scaling=True)
            (result,) = export(
                str(src), "onnx-fp32", root / f"genai-{rope}", builder="genai",
                eval_text=eval_text, thresholds=OPEN_GATE, progress=False, probe=False, window=128,
            )  # fmt: skip
            self.genai[rope] = (src, result)

    def reference(self, ids: np.ndarray, model: Any = None) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = (model or self.model)(input_ids=torch.from_numpy(ids[None, :]), use_cache=False)
        return out.logits[0].float().numpy()

    def artifact(self, fmt: str, result: Any = None) -> Any:
        if result is None and fmt not in self.family.formats():
            pytest.skip(f"{self.family.name} does not export to {fmt}")
        result = result or self.results[fmt]
        assert result.written, f"{self.family.name} {fmt}: {result.reason}"
        return family_of(fmt).logits_fn(result.path, read_manifest(result.path))


@pytest.fixture(scope="module", params=NAMES)
def matrix(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
    short_eval_text: Path,
) -> Matrix:  # fmt: skip
    return Matrix(request.param, tmp_path_factory.mktemp(request.param), short_eval_text)


def _greedy(logits_fn: Any, prompt: np.ndarray, steps: int) -> list[int]:
    ids = list(prompt)
    for _ in range(steps):
        ids.append(int(logits_fn(np.asarray(ids, dtype=np.int64))[-1].argmax()))
    return ids[len(prompt) :]


def test_every_format_is_written_and_recorded(matrix: Matrix) -> None:
    for fmt, result in matrix.results.items():
        if fmt not in matrix.family.formats():  # refused, with the registry's reason
            reason = matrix.family.gguf if fmt.startswith("gguf") else matrix.family.onnx
            assert not result.written and reason and reason in (result.reason or ""), result
            continue
        assert result.written, f"{fmt}: {result.reason}"
        manifest = read_manifest(result.path)
        assert manifest["format"] == fmt
        assert manifest["validation"]["tokens"] > 0
        if fmt.startswith("gguf"):  # llama.cpp tokenizes the eval text as transformers does
            parity = manifest["gguf"]["tokenizer_parity"]
            assert parity["identical"] and parity["first_difference"] is None, parity


def test_onnx_fp32_reproduces_transformers(matrix: Matrix) -> None:
    got = matrix.artifact("onnx-fp32")(matrix.ids)
    np.testing.assert_allclose(got, matrix.reference(matrix.ids), atol=FP32_TOL, rtol=0)
    prompt = matrix.ids[:8]
    assert _greedy(got_fn := matrix.artifact("onnx-fp32"), prompt, GREEDY_STEPS) == _greedy(
        matrix.reference, prompt, GREEDY_STEPS
    ), got_fn


def test_genai_graph_is_proven_equal_where_auto_picks_it(matrix: Matrix) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from edgerun.exporters.formats import ExportOptions
    from edgerun.exporters.onnx import resolve_builder

    config = matrix.model.config.to_dict()
    # the registry entry holding the builder facts for this model_type (the first one listed)
    holder = families.for_config(config)
    expected = (
        holder is not None
        and families.rope_type(config) in holder.genai
        and importlib.util.find_spec("onnxruntime_genai") is not None
    )
    picked = resolve_builder("onnx-fp32", ExportOptions(builder="auto"), config)
    assert (picked == "genai") == expected, (picked, matrix.family.name)
    if not matrix.family.genai:
        pytest.skip(f"{matrix.family.name}: --builder auto uses optimum's graph")
    for rope, (src, result) in matrix.genai.items():
        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
        got = matrix.artifact("onnx-fp32", result)(matrix.ids)
        want = matrix.reference(matrix.ids, model)
        np.testing.assert_allclose(got, want, atol=FP32_TOL, rtol=0, err_msg=f"rope {rope}")


def test_gguf_f16_reproduces_transformers(matrix: Matrix) -> None:
    fn = matrix.artifact("gguf-f16")
    ref = matrix.reference(matrix.ids)
    np.testing.assert_allclose(fn(matrix.ids), ref, atol=F16_TOL, rtol=0)
    prompt = matrix.ids[:8]
    _same_greedy(matrix.reference, prompt, _greedy(fn, prompt, GREEDY_STEPS), F16_TOL)


def _same_greedy(reference: Any, prompt: np.ndarray, got: list[int], tol: float) -> None:
    """`got` is transformers' greedy continuation of `prompt`, but where transformers' top-2
    margin is within twice the logit tolerance (a tie the artifact may break either way)."""
    want = _greedy(reference, prompt, len(got))
    for step, (a, b) in enumerate(zip(want, got, strict=True)):
        if a == b:
            continue
        context = np.concatenate([prompt, np.asarray(want[:step], dtype=np.int64)])
        top2 = np.sort(reference(context)[-1])[-2:]
        assert top2[1] - top2[0] <= 2 * tol, f"step {step}: {b} instead of {a}"
        break  # after a tie the sequences legitimately part


def _runtime_greedy(artifact: Path, prompt: np.ndarray) -> list[int]:
    """The greedy tokens `edgerun run` would print: edgerun.load, decoding with the KV cache."""
    with edgerun.load(artifact, threads=1) as model:
        chunks = model.generate(prompt.tolist(), max_tokens=GREEDY_STEPS, ignore_eos=True)
        return [c.token_id for c in chunks if c.token_id is not None]


@pytest.mark.parametrize("fmt,tol", [("onnx-fp32", FP32_TOL), ("gguf-f16", F16_TOL)])
def test_artifacts_run_and_decode_with_their_cache_as_transformers_does(
    matrix: Matrix, fmt: str, tol: float
) -> None:
    matrix.artifact(fmt)  # written (skips a format the family does not export to)
    path = matrix.results[fmt].path
    prompt = matrix.ids[:8]
    _same_greedy(matrix.reference, prompt, _runtime_greedy(path, prompt), tol)
    assert read_manifest(path)["validation"]["kv_decode"]["passed"]  # and validation said so


@pytest.mark.parametrize("name", TOKENIZER_JSON_ONLY)
def test_a_checkpoint_without_tokenizer_model_converts_with_parity_and_runs(
    name: str, tmp_path: Path, short_eval_text: Path
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    src = build_family_model(name, tmp_path / "src", tokenizer_json_only=True)
    assert not (src / "tokenizer.model").exists()
    (result,) = export(
        str(src), "gguf-f16", tmp_path / "out", eval_text=short_eval_text, thresholds=OPEN_GATE,
        progress=False, probe=False, window=128,
    )  # fmt: skip
    assert result.written, result.reason
    manifest = read_manifest(result.path)
    parity = manifest["gguf"]["tokenizer_parity"]
    assert parity["identical"] and parity["hf_tokens"] > 256, parity
    assert manifest["validation"]["kv_decode"]["passed"]
    assert manifest["validation"]["mean_kl"] < 1e-3
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()

    def reference(ids: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            logits = model(input_ids=torch.from_numpy(ids[None, :]), use_cache=False).logits
        return logits[0].float().numpy()

    prompt = np.random.default_rng(0).integers(5, model.config.vocab_size, 8).astype(np.int64)
    _same_greedy(reference, prompt, _runtime_greedy(result.path, prompt), F16_TOL)


@pytest.mark.parametrize("fmt", sorted(MAX_REL_ERROR))
def test_quantized_formats_pass_the_looser_check(matrix: Matrix, fmt: str) -> None:
    got = matrix.artifact(fmt)(matrix.ids)
    ref = matrix.reference(matrix.ids)
    centred = ref - ref.mean(axis=-1, keepdims=True)
    rel = float(np.sqrt(np.mean((got - ref) ** 2)) / np.sqrt(np.mean(centred**2)))
    bound = (MOE_MAX_REL_ERROR if matrix.family.moe else MAX_REL_ERROR)[fmt]
    assert rel <= bound, f"{fmt}: relative logit error {rel:.3f}"
