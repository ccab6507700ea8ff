"""Every backend against PyTorch on the tiny fixtures (llama.cpp on a GGUF f32 export,
onnxruntime-genai on a genai-builder export), identical seeded sampling across backends, profile
driven provider fallback / strict / memory budget, the backend plugin registry, tokenizer and chat
template against transformers."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgerun
from edgerun.backends import Artifact, Backend, Settings, backend_names, get_backend
from edgerun.backends.base import resolve_artifact
from edgerun.core.errors import EdgerunError
from edgerun.core.manifest import write_manifest
from edgerun.text.tokenizer import HFTokenizer
from tests.registry_fixtures import BACKEND_ARTIFACTS
from tests.runtime_helpers import (
    PROFILE,
    export_artifact,
    torch_greedy,
    torch_logits,
    torch_model,
)

PROMPTS = [[7], [12, 40, 41, 3, 200, 17, 99, 301, 6], list(range(10, 45))]
SAMPLED = dict(max_tokens=16, temperature=0.8, top_k=40, top_p=0.9, seed=21, ignore_eos=True)


@pytest.fixture(scope="module")
def artifacts(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny llama exported once per backend whose library is installed."""
    root = tmp_path_factory.mktemp("backends")
    return {
        name: export_artifact(tiny_llama, fmt, root / name, builder=builder)
        for name, (library, fmt, builder) in BACKEND_ARTIFACTS.items()
        if importlib.util.find_spec(library)
    }


# (artifact, backend): every backend on its own artifact, and the genai builder's graph in
# edgerun's own ORT loop too
PAIRS = [*((name, name) for name in sorted(BACKEND_ARTIFACTS)), ("genai", "onnxruntime")]


@pytest.mark.parametrize(("artifact", "backend"), PAIRS)
def test_backend_greedy_equals_pytorch(
    artifact: str, backend: str, artifacts: dict[str, Path], tiny_llama: Path
) -> None:
    if artifact not in artifacts:
        pytest.skip(f"{artifact} is not installed")
    reference = torch_model(tiny_llama)
    with edgerun.load(artifacts[artifact], PROFILE, backend=backend) as m:
        assert m.info.backend == backend
        for prompt in PROMPTS:
            got = [c.token_id for c in m.generate(prompt, max_tokens=12, ignore_eos=True)]
            assert got == torch_greedy(reference, prompt, 12), len(prompt)


def test_seeded_sampling_is_identical_across_backends(artifacts: dict[str, Path]) -> None:
    runs = {}
    for artifact, backend in [("onnxruntime", "onnxruntime"), *PAIRS]:
        if artifact in artifacts:
            with edgerun.load(artifacts[artifact], PROFILE, backend=backend) as m:
                tokens = [c.token_id for c in m.generate("The quick brown fox", **SAMPLED)]
                runs[f"{artifact} artifact via {backend}"] = tokens
                assert m.last_stats.generated_tokens == 16
    if len(runs) < 4:
        pytest.skip("needs llama-cpp-python and onnxruntime-genai")
    first = runs["onnxruntime artifact via onnxruntime"]
    assert len(set(first)) > 4
    assert all(tokens == first for tokens in runs.values()), runs


def test_ort_loop_on_a_genai_graph_shares_the_cache_buffer(
    artifacts: dict[str, Path], tiny_llama: Path
) -> None:
    """GroupQueryAttention updates one max-length buffer in place: step logits still equal a
    full PyTorch forward pass over a non-repetitive sequence."""
    if "genai" not in artifacts:
        pytest.skip("onnxruntime-genai is not installed")
    ids = [int(i) for i in np.random.default_rng(2).integers(3, 384, 40)]
    expected = torch_logits(torch_model(tiny_llama), ids)
    with edgerun.load(artifacts["genai"], PROFILE, backend="onnxruntime") as m:
        backend = m._backend
        assert backend._shared
        rows = [backend.prefill(ids[:7], len(ids)).copy()]
        rows += [backend.decode(t).copy() for t in ids[7:]]
        assert len(backend._buffers) == 1  # one buffer set, not a ping-pong pair
    assert np.abs(np.stack(rows) - expected[6:]).max() < 1e-4


def test_llamacpp_reports_threads_and_cpu(artifacts: dict[str, Path]) -> None:
    if "llamacpp" not in artifacts:
        pytest.skip("llama-cpp-python is not installed")
    with edgerun.load(artifacts["llamacpp"], PROFILE, threads=1) as m:
        assert (m.info.backend, m.info.providers, m.info.threads) == ("llamacpp", ["CPU"], 1)
        assert m.context_length == 256


def _profile(tmp_path: Path, backends: str, top: str = "") -> Path:
    """A valid profile file: `top` adds top-level keys, `backends` the [[backends]] tables."""
    path = tmp_path / "test.toml"
    path.write_text(
        'id = "test-profile"\nname = "Test"\ndescription = "for tests"\nthreads = 1\n'
        f'{top}[match]\narch = ["x86_64", "aarch64", "arm64", "AMD64"]\n{backends}'
    )
    return path


CUDA_FIRST = """
[[backends]]
name = "onnxruntime"
[[backends.providers]]
name = "CUDAExecutionProvider"
[backends.providers.options]
device_id = 0
[[backends.providers]]
name = "CPUExecutionProvider"
"""


def test_missing_provider_falls_back_with_a_warning(
    artifacts: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    profile = _profile(tmp_path, CUDA_FIRST)
    with edgerun.load(artifacts["onnxruntime"], profile) as m:
        assert m.info.providers == ["CPUExecutionProvider"]
        assert m.info.requested_providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
        assert m.info.threads == 1 and m.info.profile_id == "test-profile"
    err = capsys.readouterr().err
    assert (
        "warning: profile 'test-profile' wanted CUDAExecutionProvider, running CPUExecutionProvider"
        in err
    )
    with pytest.raises(EdgerunError, match="wants CUDAExecutionProvider"):
        edgerun.load(artifacts["onnxruntime"], profile, strict=True)


def test_memory_budget_refuses_with_the_numbers(artifacts: dict[str, Path], tmp_path: Path) -> None:
    profile = _profile(tmp_path, '[[backends]]\nname = "onnxruntime"\n', "memory_budget_mb = 1\n")
    with edgerun.load(artifacts["onnxruntime"], profile, context=64):
        pass  # weights ~0.4 MB + KV 64 positions fit in 1 MB
    with pytest.raises(
        EdgerunError, match=r"needs \d+ MiB .* but profile 'test-profile' allows 1 MiB"
    ):
        edgerun.load(artifacts["onnxruntime"], profile, context=4096)


def test_unknown_profile_lists_the_known_ones(artifacts: dict[str, Path]) -> None:
    with pytest.raises(EdgerunError, match="unknown profile 'nope'.*generic-x86_64"):
        edgerun.load(artifacts["onnxruntime"], "nope")


def test_forcing_a_backend_that_cannot_run_the_artifact(artifacts: dict[str, Path]) -> None:
    with pytest.raises(EdgerunError, match="backend 'llamacpp' cannot run model.onnx"):
        edgerun.load(artifacts["onnxruntime"], PROFILE, backend="llamacpp")
    with pytest.raises(EdgerunError, match="unknown backend 'nope'.*onnxruntime"):
        edgerun.load(artifacts["onnxruntime"], PROFILE, backend="nope")


class CountingBackend(Backend):
    """A third-party backend for the registry test: the next token is always the last one + 1."""

    name = "counting"

    @classmethod
    def accepts(cls, artifact: Artifact) -> bool:
        return artifact.family == "counting"

    def __init__(self, artifact: Artifact, settings: Settings) -> None:
        self.providers, self.threads, self.vocab_size = ["abacus"], settings.threads, 384

    def prefill(self, ids: Sequence[int], total: int) -> np.ndarray:
        return self.decode(ids[-1])

    def decode(self, token_id: int) -> np.ndarray:
        logits = np.zeros(self.vocab_size, np.float32)
        logits[(token_id + 1) % self.vocab_size] = 10.0
        return logits


def test_a_plugin_backend_registers_through_the_entry_point_group(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_llama: Path
) -> None:
    assert {"onnxruntime", "genai", "llamacpp"} <= set(backend_names())
    original = importlib.metadata.entry_points

    def entry_points(group: str) -> Any:
        extra = importlib.metadata.EntryPoint(
            "counting", "tests.test_runtime_backends:CountingBackend", group
        )
        return [*original(group=group), extra]

    monkeypatch.setattr("edgerun.backends.registry.entry_points", entry_points)
    monkeypatch.setattr("edgerun.core.plugins.entry_points", entry_points)  # backend_names()
    assert get_backend("counting") is CountingBackend
    art = tmp_path / "counting"
    art.mkdir()
    (art / "weights.txt").write_text("1 2 3")
    (art / "tokenizer.json").write_bytes((tiny_llama / "tokenizer.json").read_bytes())
    write_manifest(art, {"format": "counting", "family": "counting", "model_file": "weights.txt"})
    with edgerun.load(art, PROFILE) as m:
        assert (m.info.backend, m.info.providers) == ("counting", ["abacus"])
        assert [c.token_id for c in m.generate([10], max_tokens=5, ignore_eos=True)] == [
            11,
            12,
            13,
            14,
            15,
        ]


TEXTS = [
    "Hello, world! 12345",
    "Ünïcödé — naïve café, 東京 🙂",
    "spaces:    four\n\ttab",
    "€€ unseen ∮",
]


def test_tokenizer_matches_transformers(tiny_llama: Path) -> None:
    from transformers import AutoTokenizer

    ours, theirs = HFTokenizer(tiny_llama), AutoTokenizer.from_pretrained(tiny_llama)
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == theirs(text).input_ids
        assert ours.decode(ids) == theirs.decode(ids)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 🙂"}]
    assert ours.encode_chat(messages) == theirs.apply_chat_template(
        messages, add_generation_prompt=True
    )
    assert ours.eos_ids == {theirs.convert_tokens_to_ids("<|im_end|>")}


def test_streaming_detokenizer_never_splits_a_character(tiny_llama: Path) -> None:
    tok = HFTokenizer(tiny_llama)
    for text in TEXTS:
        ids = tok.encode(text)
        stream = tok.stream()
        pieces = [stream.push(i) for i in ids]
        assert "".join(pieces) + stream.flush() == text
        assert not any("\ufffd" in p for p in pieces)
    euro = tok.encode("€")
    assert len(euro) == 3  # three byte-level tokens for one character...
    stream = tok.stream()
    assert [stream.push(i) for i in euro] == ["", "", "€"]  # ...released once complete
    cut = tok.stream()  # max_tokens ends the stream inside the character: no half character
    assert [cut.push(i) for i in tok.encode("a€")[:-1]] == ["a", "", ""]
    assert cut.flush() == ""


def test_chat_applies_the_template(artifacts: dict[str, Path]) -> None:
    messages = [{"role": "user", "content": "Hello"}]
    with edgerun.load(artifacts["onnxruntime"], PROFILE) as m:
        list(m.chat(messages, max_tokens=2, ignore_eos=True))
        assert m.last_stats.prompt_tokens == len(m.tokenizer.encode_chat(messages))
        rendered = m.tokenizer.apply_chat_template(messages)
        assert rendered == "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"


def test_default_context_is_the_trained_one_capped(
    artifacts: dict[str, Path], tmp_path: Path
) -> None:
    from edgerun.backends.select import MAX_DEFAULT_CONTEXT, _model_context

    long = Artifact(tmp_path, tmp_path / "model.onnx", {"family": "onnx", "context_length": 32768})
    assert _model_context(long) == MAX_DEFAULT_CONTEXT == 4096
    if "llamacpp" not in artifacts:
        pytest.skip("llama-cpp-python is not installed")
    bare = tmp_path / "lonely.gguf"  # no config.json beside it: llama.cpp reads n_ctx_train
    bare.write_bytes((artifacts["llamacpp"] / "model.gguf").read_bytes())
    with edgerun.load(bare, PROFILE) as m:
        assert (m.info.backend, m.context_length) == ("llamacpp", 256)
        assert m.tokenizer.eos_ids  # the GGUF's own tokenizer
        assert len(list(m.generate("Hello", max_tokens=4, ignore_eos=True))) == 4
    with edgerun.load(bare, PROFILE, context=64) as m:
        assert m.context_length == 64


def test_llamacpp_gives_back_the_file_pages_it_copied(
    artifacts: dict[str, Path], tiny_llama: Path
) -> None:
    """After load the GGUF mapping's resident pages are dropped (llama.cpp's repacked copies
    are what it reads); tensors still read from the file fault back in: output unchanged.
    Where llama.cpp loaded without its extra buffers (an AMX build), it copied nothing and
    nothing is given back."""
    if "llamacpp" not in artifacts:
        pytest.skip("llama-cpp-python is not installed")
    from edgerun.backends.mapped_pages import mappings

    model_file = artifacts["llamacpp"] / "model.gguf"
    with edgerun.load(artifacts["llamacpp"], PROFILE) as m:
        assert mappings(model_file), "llama.cpp maps the file (use_mmap)"
        released = getattr(m._backend, "released_bytes", 0)
        if m._backend.amx_avoided:  # nothing copied (llama_amx): every weight read from the file
            assert released == 0
        else:
            assert released >= model_file.stat().st_size // 2
        got = [c.token_id for c in m.generate(PROMPTS[1], max_tokens=12, ignore_eos=True)]
    assert got == torch_greedy(torch_model(tiny_llama), PROMPTS[1], 12)


def test_mapped_pages_reads_only_read_only_mappings_of_the_file(tmp_path: Path) -> None:
    from edgerun.backends.mapped_pages import mappings

    model = tmp_path / "m.gguf"
    model.write_bytes(b"x")
    maps = tmp_path / "maps"
    maps.write_text(
        f"7f0000000000-7f0000100000 r--s 00000000 fe:00 1 {model}\n"
        f"7f0000100000-7f0000200000 rw-p 00000000 fe:00 1 {model}\n"  # writable: never dropped
        f"7f0000200000-7f0000300000 r--p 00000000 fe:00 2 {tmp_path}/other.gguf\n"
        "garbage line\n"
        f"zz-yy r--s 0 fe:00 1 {model}\n"
    )
    assert mappings(model, maps) == [(0x7F0000000000, 0x7F0000100000)]
    assert mappings(model, tmp_path / "absent") == []


def test_mapped_pages_are_kept_where_llama_cpp_did_not_map_or_locked_them(tmp_path: Path) -> None:
    import mmap
    import sys

    from edgerun.backends.mapped_pages import release_loaded

    if not sys.platform.startswith("linux"):
        pytest.skip("/proc/self/maps and madvise are Linux's")
    model = tmp_path / "m.gguf"
    model.write_bytes(b"x" * 8192)
    with model.open("rb") as fh, mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ) as mapped:
        assert mapped[0] == ord("x")  # resident
        for kwargs in (
            {"vocab_only": True},
            {"use_mmap": False},
            {"use_mlock": True},
        ):
            assert release_loaded(model, kwargs) == 0, kwargs
        assert release_loaded(model, {}, copied=False) == 0  # loaded without extra buffers
        assert release_loaded(model, {}) >= 8192  # the same mapping, released
        assert mapped[8191] == ord("x")  # and read back from the file


class _FakeParams:
    use_extra_bufts = True


class _FakeLlamaCpp:
    """llama_cpp with only what edgerun.backends.llama_amx touches."""

    def __init__(self, info: bytes) -> None:
        self.info = info
        self.llama_cpp = type("lib", (), {"llama_model_default_params": staticmethod(_FakeParams)})

    def llama_print_system_info(self) -> bytes:
        return self.info


@pytest.mark.parametrize(
    ("info", "env", "avoided"),
    [
        (b"CPU : AVX512 = 1 | AVX512_BF16 = 1 | AMX_INT8 = 1 | REPACK = 1 |", None, True),
        (b"CPU : AVX512 = 1 | AMX_INT8 = 1 |", "1", False),  # EDGERUN_LLAMA_AMX=1 keeps them
        (b"CPU : AVX2 = 1 | REPACK = 1 |", None, False),  # no AMX in the build: untouched
    ],
)
def test_llama_loads_keep_weights_out_of_the_amx_buffers_where_the_build_has_them(
    monkeypatch: pytest.MonkeyPatch, info: bytes, env: str | None, avoided: bool
) -> None:
    """llama.cpp #20824: ggml's AMX mul_mat segfaults on a q4_k_m (seen on this project's Xeon
    with amx_int8); a load with use_extra_bufts false never reaches it. The default model
    parameters are wrapped only inside the block and restored after it."""
    from edgerun.backends.llama_amx import ENV, no_amx_buffers

    if env is None:
        monkeypatch.delenv(ENV, raising=False)
    else:
        monkeypatch.setenv(ENV, env)
    fake = _FakeLlamaCpp(info)
    original = fake.llama_cpp.llama_model_default_params
    with no_amx_buffers(fake) as did:
        inside = fake.llama_cpp.llama_model_default_params()
    assert did is avoided
    assert inside.use_extra_bufts is (not avoided)
    assert fake.llama_cpp.llama_model_default_params is original
    assert original().use_extra_bufts is True


def test_llamacpp_load_goes_through_the_wrapped_default_parameters(
    artifacts: dict[str, Path], tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real llama-cpp-python takes its model parameters from the function the AMX guard
    wraps (if a release stops doing so, this fails rather than the guard silently doing
    nothing), and the model loaded without extra buffers still decodes as PyTorch does."""
    if "llamacpp" not in artifacts:
        pytest.skip("llama-cpp-python is not installed")
    import llama_cpp

    from edgerun.backends import llama_amx

    seen: list[Any] = []
    real = llama_cpp.llama_cpp.llama_model_default_params

    def recording() -> Any:
        seen.append(real())
        return seen[-1]

    monkeypatch.setattr(llama_cpp.llama_cpp, "llama_model_default_params", recording)
    monkeypatch.setattr(llama_amx, "build_has_amx", lambda _lib: True)
    monkeypatch.delenv(llama_amx.ENV, raising=False)
    with edgerun.load(artifacts["llamacpp"], PROFILE) as m:
        assert m._backend.amx_avoided is True
        got = [c.token_id for c in m.generate(PROMPTS[1], max_tokens=12, ignore_eos=True)]
    assert seen and seen[-1].use_extra_bufts is False
    assert got == torch_greedy(torch_model(tiny_llama), PROMPTS[1], 12)


def test_a_load_that_copies_the_weights_is_sized_and_checked_as_loaded(
    artifacts: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ONNX Runtime's prepacked weights can be larger than the file (1.25x for a 1.5B
    onnx-int8): the budget is checked, and the default context sized, with what the load
    added to the process, so a model that fits by its file size but not as loaded is refused
    in one line instead of being killed for memory later. (The tiny model's 256 positions
    need a finer context step than the real one to be seen shortened.)"""
    from edgerun.backends import select
    from edgerun.backends.ort import OrtBackend
    from edgerun.device import memory

    mb = 2**20
    copy = 300 * mb
    init = OrtBackend.__init__

    def copying(self: OrtBackend, artifact: Artifact, settings: Settings) -> None:
        init(self, artifact, settings)
        self.loaded_bytes = copy

    artifact = resolve_artifact(artifacts["onnxruntime"])
    per_token = select._kv_per_token(artifact)
    assert per_token
    budget = copy // mb + 64
    # the budget leaves room for 160 positions once the copy and the overhead are counted
    monkeypatch.setattr(select, "RUNTIME_OVERHEAD", budget * mb - copy - 160 * per_token)
    monkeypatch.setattr(select, "CONTEXT_STEP", 32)
    monkeypatch.setattr(select, "MIN_SIZED_CONTEXT", 32)
    profile = _profile(
        tmp_path, '[[backends]]\nname = "onnxruntime"\n', f"memory_budget_mb = {budget}\n"
    )
    with edgerun.load(artifacts["onnxruntime"], profile) as m:
        assert m.context_length == 256, "by its file the whole trained context fits"
    monkeypatch.setattr(OrtBackend, "__init__", copying)
    # what the check reads once loaded: this process's anonymous memory (pytest's holds torch)
    monkeypatch.setattr(memory, "anonymous_bytes", lambda: copy + 10 * mb)
    with edgerun.load(artifacts["onnxruntime"], profile) as m:
        assert m.context_length == 160
        assert "300 MiB of weights as loaded" in m.info.context_reason
    small = _profile(tmp_path, '[[backends]]\nname = "onnxruntime"\n', "memory_budget_mb = 305\n")
    copied = (
        r"needs 31\d MiB \(weights 310 MiB as loaded: this process with onnxruntime's 300 MiB"
        r" copy of the 0 MiB file \+ KV cache"
    )
    with pytest.raises(EdgerunError, match=copied):
        edgerun.load(artifacts["onnxruntime"], small, context=64)

    def mapping(self: OrtBackend, artifact: Artifact, settings: Settings) -> None:
        copying(self, artifact, settings)
        self.loaded_mapped = True  # map_prepacked: the copy is file-backed, not anonymous

    monkeypatch.setattr(OrtBackend, "__init__", mapping)
    monkeypatch.setattr(memory, "anonymous_bytes", lambda: 10 * mb)
    mapped = (
        r"needs 31\d MiB \(weights 310 MiB as loaded: this process plus onnxruntime's 300 MiB"
        r" packed copy of the 0 MiB file, mapped \+ KV cache"
    )
    with pytest.raises(EdgerunError, match=mapped):
        edgerun.load(artifacts["onnxruntime"], small, context=64)
