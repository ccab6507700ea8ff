"""Shared fixtures: an isolated EDGERUN_HOME for every test, and tiny random HF models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.tiny_models import SPECS, build_tiny_model


@pytest.fixture(scope="session")
def converters_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `converters/` cache per session (llama.cpp's GGUF converter is fetched at most once),
    or EDGERUN_TEST_CONVERTERS to keep it between sessions."""
    kept = os.environ.get("EDGERUN_TEST_CONVERTERS")
    path = Path(kept) if kept else tmp_path_factory.getbasetemp() / "converters"
    path.mkdir(parents=True, exist_ok=True)
    os.environ["EDGERUN_TEST_CONVERTERS"] = str(path)  # for homes made outside this fixture
    return path


@pytest.fixture(autouse=True)
def edgerun_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, converters_dir: Path) -> Path:
    """Point EDGERUN_HOME at a fresh directory so no test touches the user's cache; only the
    fetched GGUF converter is shared (a link to the session's converters_dir)."""
    home = tmp_path.with_name(tmp_path.name + "-edgerun-home")  # beside tmp_path, not in it
    home.mkdir()
    (home / "converters").symlink_to(converters_dir, target_is_directory=True)
    monkeypatch.setenv("EDGERUN_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every tiny fixture model, built once per session: {name: checkpoint dir}."""
    pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("tiny-models")
    return {name: build_tiny_model(name, root / name) for name in SPECS}


@pytest.fixture
def fake_dequantize(tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """GGUF pulls "dequantize" by copying the tiny llama checkpoint; returns the GGUF paths seen."""
    import shutil

    calls: list[Path] = []

    def dequantize(path: Path, out: Path) -> None:
        calls.append(path)
        for f in tiny_llama.iterdir():
            shutil.copy(f, out / f.name)

    monkeypatch.setattr("edgerun.sources.gguf_source.dequantize_gguf", dequantize)
    return calls


@pytest.fixture(scope="session")
def short_eval_text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first part of the shipped eval text: about 700 tokens of the tiny tokenizers."""
    from edgerun.exporters.reference import read_eval_text

    path = tmp_path_factory.mktemp("eval") / "eval.txt"
    path.write_text(read_eval_text(None)[:2000], encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_llama(tiny_model_dirs: dict[str, Path]) -> Path:
    return tiny_model_dirs["llama"]


@pytest.fixture(scope="session")
def tiny_qwen2(tiny_model_dirs: dict[str, Path]) -> Path:
    return tiny_model_dirs["qwen2"]


@pytest.fixture(scope="session")
def tiny_untied(tiny_model_dirs: dict[str, Path]) -> Path:
    return tiny_model_dirs["llama-untied"]


@pytest.fixture(scope="session")
def tiny_wide_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny llama at hidden size 256: wide enough for llama.cpp's K-quants (blocks of 256),
    whose kernels round a one-token step otherwise than a batch (the prompt cache's tests)."""
    pytest.importorskip("torch")
    wide = {**SPECS["llama"][1], "hidden_size": 256, "intermediate_size": 512}
    out = tmp_path_factory.mktemp("tiny-wide") / "llama"
    return build_tiny_model("llama", out, spec=("llama", wide))


@pytest.fixture(params=sorted(SPECS))
def tiny_model(request: pytest.FixtureRequest, tiny_model_dirs: dict[str, Path]) -> Path:
    """Parametrised over every fixture architecture."""
    return tiny_model_dirs[request.param]


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real SmolLM2-135M-Instruct HF checkpoint, pulled once per session (for `slow` tests).

    Set EDGERUN_TEST_HOME to a persistent directory to reuse a pull across sessions.
    """
    import os

    from edgerun.sources.resolve import resolve

    home = os.environ.get("EDGERUN_TEST_HOME") or str(tmp_path_factory.mktemp("smollm2-home"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGERUN_HOME", home)
        return resolve("smollm2-135m", progress=False).path
