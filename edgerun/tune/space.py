"""What `edgerun tune` searches: per artifact and backend (an "arm"), a few dimensions, each a
short list of values with the default first.

Dimensions are data (``Dim``): the values tried, whether a value other than the default can
change the model's outputs (then it must pass the on-device fidelity check before it is
measured), and how a value becomes backend options. Threads and affinity are every backend's;
the others belong to one backend:

    onnxruntime  graph optimisation level; intra-op thread spinning (moot with one thread);
                 MatMulNBits accuracy level* (int8 / fp32 compute; graphs with MatMulNBits)
    llamacpp     n_batch (= n_ubatch)†; flash attention*; KV cache type* (f16 / q8_0); mmap†
    * can change outputs   † searched for ttft only (cannot move decode speed or J/token)

The accuracy level is an attribute of the graph's MatMulNBits nodes, set at export; the
onnxruntime backend overrides it at load without touching the artifact
(edgerun.backends.ort_accuracy). onnxruntime-genai loads the graph from its directory by itself,
so its arm runs the exported level. Not searched (see README "Tune a device"): fp16 / bf16
compute (2 / 3: for ARM cores with those kernels, none here to measure on), mlock
(needs RLIMIT_MEMLOCK, rarely granted); the context, which is sized to the profile's memory
budget by the runtime and recorded, not timed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgerun.tune.topology import Topology

# llama.cpp's ggml type ids for the KV cache (ggml.h: GGML_TYPE_F16 = 1, GGML_TYPE_Q8_0 = 8).
KV_TYPES = {"f16": 1, "q8_0": 8}
Config = dict[str, Any]


@dataclass(frozen=True)
class Dim:
    """One searched setting: its values (the default first), whether a non-default value can
    change outputs, and the backend options a value maps to (None: not a backend option).

    What the search may skip (edgerun.tune.search): ``affects``, the objectives a value can
    move (None: every one); ``moot``, true for configurations where the value cannot matter;
    ``ordered``, values listed by degree from the default, so a step that does not help ends
    the walk; ``same``, values that compute exactly what an earlier value computes (value ->
    that value), measured as that value; ``implied``, the value the other settings of a
    configuration force on this one (None: they force none), measured as that value;
    ``slower``, values a probe on this machine measured slower beyond doubt (value -> what it
    measured), never screened."""

    name: str
    values: list[Any]
    changes_output: bool = False
    options: Callable[[Any], dict[str, Any]] | None = None
    affects: tuple[str, ...] | None = None
    moot: Callable[[Config], bool] | None = None
    ordered: bool = False
    same: dict[Any, Any] = field(default_factory=dict)
    implied: Callable[[Config], Any] | None = None
    slower: dict[Any, str] = field(default_factory=dict)


def _one_thread(config: Config) -> bool:
    return threads_and_cpus(config, {})[0] == 1


#: Graph optimisation levels, the default first, fewer transformers at each step.
ORT_LEVELS = ["ORT_ENABLE_ALL", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_BASIC"]


def _ort_dims() -> list[Dim]:
    return [
        Dim(
            "graph_optimization_level",
            list(ORT_LEVELS),
            options=lambda v: {"graph_optimization_level": v},
            ordered=True,  # fewer fusions at each step
        ),
        Dim(
            "spinning",
            [True, False],
            options=lambda v: {
                "session_config": {"session.intra_op.allow_spinning": "1" if v else "0"}
            },
            moot=_one_thread,  # one intra-op thread: no pool threads to spin
        ),
    ]


def _kv_options(value: str) -> dict[str, Any]:
    if value == "f16":
        return {}
    # a quantized V cache needs flash attention in llama.cpp
    return {"type_k": KV_TYPES[value], "type_v": KV_TYPES[value], "flash_attn": True}


def _flash_for_kv(config: Config) -> bool | None:
    """Flash attention where the KV cache is quantized (_kv_options turns it on): in the
    session-14 sweep flash_attn=False and True beside kv_cache=q8_0 were one computation
    measured twice, at 112.4 and 140.6 tok/s."""
    return True if config.get("kv_cache", "f16") != "f16" else None


def _llamacpp_dims() -> list[Dim]:
    return [
        # n_batch only splits the prompt; mmap only pages the weights in (before the warm-up
        # ends): neither runs while decoding one token at a time
        Dim(
            "n_batch",
            [512, 128],
            options=lambda v: {"n_batch": v, "n_ubatch": v},
            affects=("ttft",),
        ),
        Dim(
            "flash_attn",
            [False, True],
            True,
            options=lambda v: {"flash_attn": v},
            implied=_flash_for_kv,  # kv_cache=q8_0 runs flash attention whatever this says
        ),
        Dim("kv_cache", ["f16", "q8_0"], True, options=_kv_options),
        Dim("mmap", [True, False], options=lambda v: {"use_mmap": v}, affects=("ttft",)),
    ]


def accuracy_dim(levels: list[int]) -> Dim | None:
    """The MatMulNBits accuracy level, exported level first, for a graph whose MatMulNBits
    nodes are at `levels`; None when there are none, or several (mixed levels have no single
    default to start from). Level 0 (unset) computes in fp32 like 1, so it is tried against 4."""
    from edgerun.backends.ort_accuracy import SEARCHED

    if len(levels) != 1:
        return None
    exported = levels[0]
    same = {exported, 1} if exported in (0, 1) else {exported}
    values = [exported, *(v for v in SEARCHED if v not in same)]

    def options(value: int) -> dict[str, Any]:
        return {} if value == exported else {"accuracy_level": value}

    return Dim("accuracy_level", values, True, options=options)


#: Backend -> the dimensions of its own options.
BACKEND_DIMS: dict[str, Callable[[], list[Dim]]] = {
    "onnxruntime": _ort_dims,
    "llamacpp": _llamacpp_dims,
}


def thread_counts(cpus: int, default: int) -> list[int]:
    """The default first, then 1, 2, 4, ... up to `cpus` and `cpus` itself (at most ~6 values)."""
    values = {default, cpus} | {2**i for i in range(int(math.log2(max(cpus, 1))) + 1)}
    return [default, *sorted(v for v in values if v != default and 1 <= v <= cpus)]


def placements(choices: dict[str, list[int]], default_threads: int) -> list[str]:
    """Threads and CPU set searched together ("4@big"): where cores differ, the best thread
    count depends on the set (all 8 cores of a big.LITTLE board vs its 4 big ones), so one
    dimension holds both. The default ("N@all") first."""
    values = [f"{default_threads}@all"]
    for name, cpus in choices.items():
        default = len(cpus) if name != "all" else default_threads
        values += [f"{n}@{name}" for n in thread_counts(len(cpus), default)]
    return list(dict.fromkeys(values))


def threads_and_cpus(
    config: Config, affinity: dict[str, list[int]]
) -> tuple[int | None, list[int]]:
    """(threads, CPUs to pin to, [] for none) of a configuration, from "threads" or "placement"."""
    placement = config.get("placement")
    if placement is None:
        return config.get("threads"), []
    threads, _, name = str(placement).partition("@")
    cpus = affinity.get(name, [])
    return int(threads), [] if name == "all" else cpus


#: Backends that run another backend's kernels: onnxruntime-genai runs the graph in an
#: onnxruntime session, so one artifact under both computes with the same kernels.
ENGINES = {"genai": "onnxruntime"}


@dataclass
class Arm:
    """One artifact on one backend, and the dimensions searched for it."""

    artifact: Path
    format: str
    backend: str
    dims: list[Dim]
    mean_kl: float | None = None  # the export's validation KL (manifest)
    #: settings of its engine's dimensions this backend runs but cannot change, each a
    #: one-value Dim (edgerun.tune.space.run_fixed): onnxruntime-genai spins its threads
    fixed: list[Dim] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.format}@{self.backend}"

    @property
    def kernels(self) -> tuple[str, str]:
        """(artifact, engine): arms with equal kernels run the same graph on the same kernels."""
        return str(self.artifact), ENGINES.get(self.backend, self.backend)

    def default(self) -> Config:
        """Every dimension at its default value."""
        return {d.name: d.values[0] for d in self.dims}

    def size(self) -> int:
        """Configurations an exhaustive sweep of this arm measures."""
        return math.prod(len(d.values) for d in self.dims)

    def every(self) -> list[Config]:
        """Every configuration (the exhaustive sweep)."""
        names = [d.name for d in self.dims]
        return [
            dict(zip(names, c, strict=True))
            for c in itertools.product(*(d.values for d in self.dims))
        ]

    def normalise(self, config: Config) -> Config:
        """`config` with each moot setting at its default, each value that computes what
        another does (``Dim.same``) as that value and each setting the others force
        (``Dim.implied``) at the forced value: one key per distinct computation."""
        config = dict(config)
        for dim in self.dims:
            forced = dim.implied(config) if dim.implied is not None else None
            if dim.moot is not None and dim.moot(config):
                config[dim.name] = dim.values[0]
            elif forced is not None:
                config[dim.name] = forced
            elif config.get(dim.name) in dim.same:
                config[dim.name] = dim.same[config[dim.name]]
        return config

    def output_key(self, config: Config) -> tuple[Any, ...]:
        """The settings of `config` that can change outputs: configs with equal keys give the
        same outputs, so one fidelity check covers them all."""
        return tuple(config[d.name] for d in self.dims if d.changes_output)

    def options(self, config: Config) -> dict[str, Any]:
        """Backend options for `config` (session_config entries merged)."""
        out: dict[str, Any] = {}
        for dim in self.dims:
            if dim.options is None:
                continue
            for key, value in dim.options(config[dim.name]).items():
                if isinstance(value, dict):
                    out[key] = {**out.get(key, {}), **value}
                else:
                    out[key] = value
        return out


def run_fixed(arms: list[Arm]) -> None:
    """Give each arm whose backend runs another's kernels (``ENGINES``) the settings it runs
    of that engine's arm's dimensions without searching them: their default values, the
    exported accuracy level included. Measured for onnxruntime-genai 0.11.4 on the SmolLM2
    onnx-int4 export, two threads, 2 ms between tokens (benchmarks/genai_spinning.py,
    results/genai-spinning-20261208T003148Z.json): its process used 1.77 CPUs per wall second,
    onnxruntime 1.76 with spinning and 1.28 without, so it spins."""
    for arm in arms:
        engine = next(
            (a for a in arms if a is not arm and a.backend == ENGINES.get(arm.backend)
             and a.kernels == arm.kernels),
            None,
        )  # fmt: skip
        if engine is None:
            continue
        own = {d.name for d in arm.dims}
        arm.fixed = [
            replace(d, values=[d.values[0]], same={}) for d in engine.dims if d.name not in own
        ]


@dataclass
class Space:
    """Every arm to search, and the machine facts it was built from."""

    arms: list[Arm]
    topology: Topology
    affinity: dict[str, list[int]] = field(default_factory=dict)

    def size(self) -> int:
        """Configurations an exhaustive sweep measures."""
        return sum(arm.size() for arm in self.arms)

    def to_json(self) -> dict[str, Any]:
        """What the provenance records: every arm's dimensions and values, the CPU sets."""
        return {
            "arms": [
                {
                    "artifact": str(a.artifact),
                    "format": a.format,
                    "backend": a.backend,
                    "dims": {d.name: d.values for d in a.dims},
                    "same": {d.name: d.same for d in a.dims if d.same},
                    "slower": {d.name: d.slower for d in a.dims if d.slower},
                    "fixed": {d.name: d.values[0] for d in a.fixed},
                    "changes_output": [d.name for d in a.dims if d.changes_output],
                }
                for a in self.arms
            ],
            "affinity": self.affinity,
            "exhaustive_configs": self.size(),
        }


def build_arm(
    artifact: Path,
    fmt: str,
    backend: str,
    topology: Topology,
    default_threads: int,
    mean_kl: float | None = None,
    accuracy_levels: list[int] | None = None,
    same_levels: dict[str, str] | None = None,
    slower_levels: dict[int, str] | None = None,
) -> Arm:
    """The arm for `artifact` on `backend`: threads (over the fastest CPU set's size),
    affinity where cores differ, then the backend's own dimensions. accuracy_levels: the
    MatMulNBits levels of the artifact's graph (onnxruntime only; None or []: no such nodes).
    same_levels: graph optimisation levels that optimize its graph exactly as an earlier level
    does (edgerun.backends.ort_graph_levels.same_as; onnxruntime only). slower_levels:
    accuracy levels whose MatMulNBits products ran slower beyond doubt here, with what was
    measured (edgerun.backends.ort_nbits_probe.slower_levels; onnxruntime only)."""
    choices = topology.affinity_choices()
    if choices:
        dims = [Dim("placement", placements(choices, default_threads))]
    else:
        dims = [Dim("threads", thread_counts(len(topology.cpus), default_threads))]
    dims += BACKEND_DIMS.get(backend, list)()
    if same_levels and backend == "onnxruntime":
        dims = [
            replace(d, same=dict(same_levels)) if d.name == "graph_optimization_level" else d
            for d in dims
        ]
    accuracy = accuracy_dim(accuracy_levels or []) if backend == "onnxruntime" else None
    if accuracy is not None:
        dims.append(replace(accuracy, slower=dict(slower_levels or {})))
    return Arm(artifact, fmt, backend, dims, mean_kl)
