"""The MatMulNBits accuracy level as a load-time option of the onnxruntime backend, and as a
dimension `edgerun tune` searches: the override computes exactly what an export at that level
computes, leaves the artifact untouched, and bad values or graphs are one-line errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from edgerun.backends.ort_accuracy import graph_levels, with_level
from edgerun.core.errors import EdgerunError
from edgerun.tune.space import accuracy_dim, build_arm
from edgerun.tune.topology import Topology

PROMPT = "The quick brown fox jumps over the lazy dog, and then"


@pytest.fixture(scope="module")
def int4(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """The tiny llama exported to onnx-int4 at accuracy level 4 (the default) and at 1."""
    from tests.runtime_helpers import export_artifact

    out = tmp_path_factory.mktemp("accuracy")
    return {
        level: export_artifact(tiny_llama, "onnx-int4", out / str(level), accuracy_level=level)
        for level in (4, 1)
    }


def logits(artifact: Path, **options: object) -> np.ndarray:
    import edgerun

    with edgerun.load(artifact, backend="onnxruntime", threads=1, **options) as model:
        ids = model.tokenizer.encode(PROMPT)
        return model.forced_logits(ids, 2)


def digest(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.is_file()
    }


def test_the_override_computes_what_an_export_at_that_level_computes(
    int4: dict[int, Path],
) -> None:
    from edgerun.backends.base import resolve_artifact

    four, one = int4[4], int4[1]
    assert graph_levels(resolve_artifact(four).model_file) == [4]
    assert graph_levels(resolve_artifact(one).model_file) == [1]
    before = digest(four)
    exported_one, exported_four = logits(one), logits(four)
    overridden_one = logits(four, accuracy_level=1)
    # the weights are the same (the level is only how the op computes), so the override is the
    # level-1 export, bit for bit, and differs from the level-4 run
    np.testing.assert_array_equal(overridden_one, exported_one)
    assert not np.array_equal(overridden_one, exported_four)
    np.testing.assert_array_equal(logits(one, accuracy_level=4), exported_four)
    assert digest(four) == before  # nothing written into the artifact


def test_the_rewrite_keeps_the_weights_external(int4: dict[int, Path]) -> None:
    import onnx

    from edgerun.backends.base import resolve_artifact

    model_file = resolve_artifact(int4[4]).model_file
    graph = onnx.load_from_string(with_level(model_file, 1))
    external = [t for t in graph.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external, "the test artifact should keep its weights in external data"
    levels = {
        a.i for n in graph.graph.node if n.op_type == "MatMulNBits" for a in n.attribute
        if a.name == "accuracy_level"
    }  # fmt: skip
    assert levels == {1}
    assert len(graph.SerializeToString()) < model_file.stat().st_size + 4096


@pytest.mark.parametrize("bad", [5, -1, "4", 2.0, True])
def test_a_bad_level_is_a_one_line_error(int4: dict[int, Path], bad: object) -> None:
    with pytest.raises(EdgerunError, match="accuracy_level must be one of") as err:
        logits(int4[4], accuracy_level=bad)
    assert "\n" not in err.value.message


def test_a_graph_without_matmulnbits_runs_as_exported_and_says_so(
    tiny_llama: Path, tmp_path: Path
) -> None:
    """A tuned profile's level must not stop an fp32 artifact; strict makes it an error."""
    import edgerun
    from tests.runtime_helpers import export_artifact

    fp32 = export_artifact(tiny_llama, "onnx-fp32", tmp_path)
    np.testing.assert_array_equal(logits(fp32, accuracy_level=1), logits(fp32))
    with edgerun.load(fp32, backend="onnxruntime", accuracy_level=1) as model:
        assert any("has none" in w for w in model.info.warnings), model.info.warnings
    with pytest.raises(EdgerunError, match="has none"):
        edgerun.load(fp32, backend="onnxruntime", accuracy_level=1, strict=True)


def test_a_corrupt_graph_is_a_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\xff\x00 not a protobuf" * 10)
    with pytest.raises(EdgerunError, match="cannot read the graph"):
        graph_levels(bad)


def test_the_accuracy_dimension_starts_at_the_exported_level() -> None:
    four = accuracy_dim([4])
    assert four is not None and four.values == [4, 1] and four.changes_output
    assert four.options(4) == {} and four.options(1) == {"accuracy_level": 1}
    unset = accuracy_dim([0])  # 0 computes in fp32 like 1: only int8 is another choice
    assert unset is not None and unset.values == [0, 4]
    assert accuracy_dim([1, 4]) is None and accuracy_dim([]) is None
    topology = Topology(cpus=[0, 1], clusters=[[0, 1]], one_per_core=[0, 1])
    ort = build_arm(Path("a"), "onnx-int4", "onnxruntime", topology, 2, None, [4])
    genai = build_arm(Path("a"), "onnx-int4", "genai", topology, 2, None, [4])
    assert "accuracy_level" in {d.name for d in ort.dims}
    assert "accuracy_level" not in {d.name for d in genai.dims}  # genai loads its own graph
    assert ort.output_key({**ort.default(), "accuracy_level": 1}) != ort.output_key(ort.default())


def test_the_planned_space_searches_the_level_of_an_int4_artifact(int4: dict[int, Path]) -> None:
    from edgerun.device.profile import get_profile
    from edgerun.tune.plan import plan_space

    topology = Topology(cpus=[0, 1], clusters=[[0, 1]], one_per_core=[0, 1])
    space = plan_space(int4[4], get_profile("generic-x86_64"), topology, 2)
    ort = next(a for a in space.arms if a.backend == "onnxruntime")
    dim = next(d for d in ort.dims if d.name == "accuracy_level")
    assert dim.values == [4, 1]
    assert ort.options({**ort.default(), "accuracy_level": 1})["accuracy_level"] == 1
    # onnxruntime-genai runs the same graph on the same kernels with onnxruntime's defaults
    # for what it cannot set (it spins its threads) and the exported level
    genai = next(a for a in space.arms if a.backend == "genai")
    assert {d.name: d.values[0] for d in genai.fixed} == {
        "graph_optimization_level": "ORT_ENABLE_ALL", "spinning": True, "accuracy_level": 4,
    }  # fmt: skip
    assert ort.fixed == []


# ---- graph optimisation levels that optimize alike (edgerun.backends.ort_graph_levels) -------


def test_levels_with_the_same_optimized_graph_compute_the_same(int4: dict[int, Path]) -> None:
    """ALL adds only convolution layout transformers to EXTENDED: for a decoder graph the two
    optimized graphs are identical, and so are the logits; BASIC does not fuse (SiLU stays
    Sigmoid + Mul), so it is a graph of its own. Nothing is written beside the artifact."""
    from edgerun.backends.base import resolve_artifact
    from edgerun.backends.ort_graph_levels import optimized_digest, same_as
    from edgerun.tune.space import ORT_LEVELS

    model_file = resolve_artifact(int4[4]).model_file
    before = digest(int4[4])
    same = same_as(model_file, ORT_LEVELS)
    assert same == {"ORT_ENABLE_EXTENDED": "ORT_ENABLE_ALL"}
    assert optimized_digest(model_file, "ORT_ENABLE_BASIC") != optimized_digest(
        model_file, "ORT_ENABLE_ALL"
    )
    assert digest(int4[4]) == before
    at = {level: logits(int4[4], graph_optimization_level=level) for level in ORT_LEVELS}
    assert np.array_equal(at["ORT_ENABLE_EXTENDED"], at["ORT_ENABLE_ALL"])


def test_the_planned_space_measures_one_of_two_alike_levels(int4: dict[int, Path]) -> None:
    """The planned arm keeps the nominal levels (the exhaustive sweep's space is unchanged) and
    maps EXTENDED to ALL, so tune measures that computation once."""
    from edgerun.device.profile import get_profile
    from edgerun.tune.plan import plan_space

    topology = Topology(cpus=[0, 1], clusters=[[0, 1]], one_per_core=[0, 1])
    space = plan_space(int4[4], get_profile("generic-x86_64"), topology, 2)
    ort = next(a for a in space.arms if a.backend == "onnxruntime")
    dim = next(d for d in ort.dims if d.name == "graph_optimization_level")
    assert len(dim.values) == 3 and dim.same == {"ORT_ENABLE_EXTENDED": "ORT_ENABLE_ALL"}
    extended = {**ort.default(), "graph_optimization_level": "ORT_ENABLE_EXTENDED"}
    assert ort.normalise(extended) == ort.default()
    recorded = space.to_json()["arms"]
    assert recorded[0]["same"] == {
        "graph_optimization_level": {"ORT_ENABLE_EXTENDED": "ORT_ENABLE_ALL"}
    }


def test_a_graph_onnxruntime_cannot_optimize_is_a_one_line_error(tmp_path: Path) -> None:
    from edgerun.backends.ort_graph_levels import optimized_digest

    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(EdgerunError, match="cannot optimize model.onnx at ORT_ENABLE_ALL") as err:
        optimized_digest(bad, "ORT_ENABLE_ALL")
    assert "\n" not in err.value.message
    with pytest.raises(EdgerunError, match="unknown graph optimisation level"):
        optimized_digest(bad, "ORT_ENABLE_MOST")


# ---- the mapped prepacked cache (edgerun.backends.ort_prepacked) ---------------------------


def test_mapped_prepacked_weights_compute_the_same_and_leave_the_heap(
    int4: dict[int, Path], edgerun_home: Path
) -> None:
    """The cached model gives the ordinary load's logits bit for bit, with and without an
    accuracy-level rewrite; the packed weights are then file-backed, not anonymous memory."""
    import edgerun
    from edgerun.backends.ort_prepacked import CACHE_NAME

    four = int4[4]
    before = digest(four)
    plain, plain_one = logits(four), logits(four, accuracy_level=1)
    np.testing.assert_array_equal(logits(four, map_prepacked=True), plain)
    entries = sorted((edgerun_home / CACHE_NAME).iterdir())
    assert len(entries) == 1 and (entries[0] / "model.onnx.data").is_file()
    np.testing.assert_array_equal(logits(four, map_prepacked=True), plain)  # from the cache
    np.testing.assert_array_equal(logits(four, map_prepacked=True, accuracy_level=1), plain_one)
    assert len(list((edgerun_home / CACHE_NAME).iterdir())) == 2  # one entry per graph
    with edgerun.load(four, backend="onnxruntime", map_prepacked=True) as model:
        backend = model._backend
        assert backend.loaded_mapped and backend.loaded_bytes is not None
        assert not model.info.warnings
    assert digest(four) == before


def test_mapped_prepacked_falls_back_and_says_why(
    int4: dict[int, Path], edgerun_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    import edgerun
    from edgerun.backends import ort_prepacked

    usage = shutil.disk_usage(edgerun_home)
    monkeypatch.setattr(ort_prepacked.shutil, "disk_usage", lambda _p: usage._replace(free=0))
    with edgerun.load(int4[4], backend="onnxruntime", map_prepacked=True) as model:
        (warning,) = model.info.warnings
        assert "needs about" in warning and "loaded the ordinary way" in warning
        assert not model._backend.loaded_mapped
    assert not list((edgerun_home / ort_prepacked.CACHE_NAME).iterdir())  # nothing half-written
    with pytest.raises(EdgerunError, match="needs about"):
        edgerun.load(int4[4], backend="onnxruntime", map_prepacked=True, strict=True)
    with pytest.raises(EdgerunError, match="map_prepacked must be true or false"):
        edgerun.load(int4[4], backend="onnxruntime", map_prepacked="yes")


def test_a_changed_artifact_gets_another_cache_entry(
    int4: dict[int, Path], edgerun_home: Path, tmp_path: Path
) -> None:
    """The key covers the weights beside the graph: re-exported (here: touched) weights are
    packed again, never read from a stale entry."""
    import os
    import shutil

    from edgerun.backends.base import resolve_artifact
    from edgerun.backends.ort_prepacked import cache_key

    copy = tmp_path / "copy"
    shutil.copytree(int4[4], copy)
    model_file = resolve_artifact(copy).model_file
    key = cache_key(model_file, str(model_file), {})
    assert cache_key(model_file, str(model_file), {}) == key
    data = next(p for p in copy.iterdir() if p.name.endswith("data"))
    os.utime(data, ns=(data.stat().st_atime_ns, data.stat().st_mtime_ns + 10**9))
    assert cache_key(model_file, str(model_file), {}) != key
    level = {"graph_optimization_level": "ORT_ENABLE_BASIC"}
    assert cache_key(model_file, str(model_file), level) != cache_key(
        model_file, str(model_file), {}
    )


# ---- the kernel probe (edgerun.backends.ort_nbits_probe) --------------------------------------


def test_the_probe_times_every_matmulnbits_kind_of_the_graph(int4: dict[int, Path]) -> None:
    """The probe groups the graph's MatMulNBits nodes by kind and times one decode step's
    products per level; its one-node graphs are valid MatMulNBits that compute alike at both
    levels (only the rounding of int8 activations differs). No timing is asserted."""
    import onnxruntime as ort

    from edgerun.backends.base import resolve_artifact
    from edgerun.backends.ort_accuracy import read_graph
    from edgerun.backends.ort_nbits_probe import _node_model, kinds, step_seconds

    model_file = resolve_artifact(int4[4]).model_file
    found = kinds(model_file)
    nodes = [n for n in read_graph(model_file).graph.node if n.op_type == "MatMulNBits"]
    assert sum(found.values()) == len(nodes) > 0
    assert all(bits in (4, 8) and block > 0 for _k, _n, bits, block, _z in found)
    seconds = step_seconds(model_file, [4, 1])
    assert set(seconds) == {4, 1} and all(s > 0 for s in seconds.values())
    kind = max(found, key=lambda k: k[0] * k[1])
    a = np.random.default_rng(3).standard_normal((1, kind[0]), np.float32)
    out = {
        level: ort.InferenceSession(_node_model(kind, level)).run(None, {"A": a})[0]
        for level in (4, 1)
    }
    assert out[4].shape == (1, min(kind[1], 4096)) and np.abs(out[1]).max() > 0
    assert np.abs(out[4] - out[1]).max() < 0.05 * np.abs(out[1]).max()


@pytest.mark.parametrize(("fp32_ms", "pruned"), [(6.0, True), (1.4, False)])
def test_a_level_the_probe_measured_far_slower_is_never_screened(
    int4: dict[int, Path], monkeypatch: pytest.MonkeyPatch, fp32_ms: float, pruned: bool
) -> None:
    """Level 1's products 6x level 4's: the planned dimension keeps both nominal levels (the
    sweep is unchanged) but marks 1 slower, and the search prunes it, saying what was measured;
    at 1.4x it is screened as before. The probe's times are faked here, not measured."""
    from edgerun.backends import ort_nbits_probe
    from edgerun.device.profile import get_profile
    from edgerun.tune.plan import plan_space
    from edgerun.tune.search import Search

    monkeypatch.setattr(
        ort_nbits_probe, "step_seconds", lambda _f, levels: {4: 1e-3, 1: fp32_ms * 1e-3}
    )
    topology = Topology(cpus=[0, 1], clusters=[[0, 1]], one_per_core=[0, 1])
    space = plan_space(int4[4], get_profile("generic-x86_64"), topology, 2)
    ort = next(a for a in space.arms if a.backend == "onnxruntime")
    dim = next(d for d in ort.dims if d.name == "accuracy_level")
    assert dim.values == [4, 1]
    assert (1 in dim.slower) is pruned
    measured: list[int] = []

    def measure(arm, config, reps):  # type: ignore[no-untyped-def]
        measured.append(config.get("accuracy_level", 4))
        return [{"decode_tok_s": 100.0 + d} for d in (-0.5, 0.0, 0.5)][:reps], 0

    outcome = Search(space, measure, lambda arm, config: None).run()
    assert (1 in measured) is not pruned
    reasons = [p["reason"] for p in outcome.pruned if p.get("dim") == "accuracy_level"]
    if pruned:
        assert reasons == [
            "its MatMulNBits products took 6.0x level 4's here (6.00 against 1.00 ms a step,"
            " one thread)"
        ]
    else:
        assert reasons == []
    # the probe times one-row products: a prompt's many-row ones are screened for ttft
    measured.clear()

    def measure_ttft(arm, config, reps):  # type: ignore[no-untyped-def]
        measured.append(config.get("accuracy_level", 4))
        return [{"ttft_s": 0.1 + d} for d in (-0.001, 0.0, 0.001)][:reps], 0

    Search(space, measure_ttft, lambda arm, config: None, objective="ttft").run()
    assert 1 in measured
