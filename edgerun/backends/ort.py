"""ONNX Runtime backend: our own IOBinding generation loop over optimum-built decoder graphs
(task text-generation-with-past) and over onnxruntime-genai builder graphs.

Graph contract: inputs input_ids, attention_mask, [position_ids], past_key_values.N.key/value
[batch, kv_heads, past, head_dim]; outputs logits, present.N.key/value [.., past + new, ..].

KV cache: the optimum graph *concatenates* past and new keys/values (Concat inside attention), so
present is always a fresh tensor one position longer than past, with a different memory layout
per head: it cannot alias past, and a fixed max-length past would make every step attend over
and copy the whole buffer. So the cache lives in two sets of buffers allocated once per capacity
(ping-pong): step t reads past from set A and ORT writes present straight into set B, which is
step t+1's past. Binding is by raw pointer with the current shape, so no per-token allocation and
no Python copy of the cache happens; the only per-token copy is the Concat the graph itself does.

Graphs from the onnxruntime-genai builder use GroupQueryAttention, which can update the cache in
place (genai_config "past_present_share_buffer"): there each K/V gets one max-length buffer,
bound once as both past and present; per step only the attention mask (whose length tells the op
the sequence length) is re-bound. That is genai's own memory scheme, minus its generator.

Logits: decode steps write them into one pre-allocated [1, 1, vocab] array. Prefill computes all
prompt positions' logits because the graph's lm_head has no "last position only" input; doing
better needs a graph rewrite, which is left to the exporter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgerun.backends.base import Artifact, Backend, Settings
from edgerun.core.errors import EdgerunError, first_line

_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
# ONNX TensorProto element types: binding with the int is a little cheaper than a numpy type.
_ONNX_TYPES = {np.float32: 1, np.float16: 10, np.int64: 7}
# Capacity grows in steps of this many positions, so similar requests reuse the buffers.
_CAPACITY_STEP = 256


# Logits bytes of one prefill pass (OrtBackend._run_chunked): 64 MiB is 110 positions of a
# 151,936-token vocabulary in fp32, 341 of SmolLM2's 49,152.
PREFILL_LOGITS_BYTES = 64 << 20


class OrtBackend(Backend):
    """optimum ONNX export + onnxruntime.InferenceSession + IOBinding generation loop."""

    name = "onnxruntime"
    uses_providers = True

    @classmethod
    def accepts(cls, artifact: Artifact) -> bool:
        if artifact.family != "onnx":
            return False
        return artifact.builder != "genai" or _shared_buffer_graph(artifact)

    @classmethod
    def available_providers(cls) -> list[str]:
        import onnxruntime

        return list(onnxruntime.get_available_providers())

    def __init__(self, artifact: Artifact, settings: Settings) -> None:
        import onnxruntime as ort

        self.threads = settings.threads
        providers = settings.providers or [("CPUExecutionProvider", {})]
        from edgerun.device.memory import anonymous_bytes

        self.fallbacks = []
        source, folder = self._source(artifact, settings)

        def make_options() -> Any:
            opts = _session_options(ort, settings)
            if folder is not None:  # a graph given as bytes: its weights stay in the artifact
                from edgerun.backends.ort_accuracy import FOLDER_KEY

                opts.add_session_config_entry(FOLDER_KEY, folder)
            return opts

        mapped = None
        if settings.options.get("map_prepacked"):
            source, mapped = self._mapped(artifact, settings, source, make_options, providers)
            folder = None if mapped is not None else folder
        opts = make_options()
        before = anonymous_bytes()
        try:
            self.session = ort.InferenceSession(
                source,
                opts,
                providers=[name for name, _ in providers],
                provider_options=[options for _, options in providers],
            )
        except Exception as exc:  # ORT raises its own pybind exception types
            first = first_line(exc)
            raise EdgerunError(
                f"onnxruntime cannot load {artifact.model_file}: {first}",
                "the file is corrupt, truncated or not ONNX: re-export it (edgerun verify checks hashes)",
            ) from exc
        # MLAS prepacks MatMulNBits weights into its own layout at load (codes, fp32 scales and
        # block sums) and keeps the original scales: a Qwen2.5-1.5B-shaped onnx-int8 (1,672 MiB
        # file) grew the process's anonymous memory by 2,095 MiB (1.25x; 1,779 MiB for 1,534
        # with --block-size 128), a SmolLM2-135M onnx-int4 by 133 MiB (100 MiB file). Prepacking
        # off loads in 287 MiB but dequantizes every weight to fp32 on every call (0.12 tok/s).
        # A process that freed memory before reuses it: the growth is then a lower bound.
        self.loaded_bytes = mapped if mapped is not None else max(anonymous_bytes() - before, 0)
        self.loaded_mapped = mapped is not None
        self.providers = list(self.session.get_providers())
        self._layout(artifact)
        self._shared = artifact.builder == "genai"
        # The cache lives where attention runs (untested on GPUs here: no CUDA build on this box).
        gpu = {"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(self.providers[:1])
        self._device = "cuda" if gpu else "cpu"
        self._binding = _Binding(ort, self.session, self._device)
        self.can_verify = self._device == "cpu"  # rollback repacks the cache with numpy
        self.can_snapshot = self._device == "cpu"  # the prompt cache copies with numpy
        self._capacity = 0
        self._length = 0
        self._flip = 0
        self._logits = np.empty((1, 1, self.vocab_size), self._logits_dtype)
        self._ids = np.zeros((1, 1), np.int64)
        self._pos = np.zeros((1, 1), np.int64)

    def _source(self, artifact: Artifact, settings: Settings) -> tuple[str | bytes, str | None]:
        """(the graph to load: its path, or its bytes after an accuracy-level rewrite; the
        folder of the weights when it is bytes)."""
        level = settings.options.get("accuracy_level")
        if level is None:
            return str(artifact.model_file), None
        from edgerun.backends import ort_accuracy

        rewritten = ort_accuracy.with_level(artifact.model_file, level)
        if rewritten is None:
            self.fallbacks.append(
                f"accuracy_level {level} applies to MatMulNBits nodes; this graph has none,"
                " so it runs as exported"
            )
            return str(artifact.model_file), None
        return rewritten, str(artifact.model_file.parent)

    def _mapped(
        self,
        artifact: Artifact,
        settings: Settings,
        source: str | bytes,
        make_options: Any,
        providers: list[tuple[str, dict[str, Any]]],
    ) -> tuple[str | bytes, int | None]:
        """(the cached model whose packed weights are mapped, the bytes they take), or the
        source unchanged and None with a fallback noted (edgerun.backends.ort_prepacked)."""
        value = settings.options["map_prepacked"]
        if not isinstance(value, bool):
            raise EdgerunError(
                f"map_prepacked must be true or false, got {value!r}", "use map_prepacked = true"
            )
        if [name for name, _ in providers] != ["CPUExecutionProvider"]:
            self.fallbacks.append(
                "map_prepacked applies to the CPU execution provider alone; loaded the ordinary way"
            )
            return source, None
        from edgerun.backends import ort_prepacked

        try:
            path, packed = ort_prepacked.prepacked_model(
                artifact.model_file, source, settings.options, make_options,
                artifact.weights_bytes(),
            )  # fmt: skip
        except EdgerunError as exc:
            self.fallbacks.append(f"{exc.message}; loaded the ordinary way")
            return source, None
        return str(path), packed

    def _layout(self, artifact: Artifact) -> None:
        """Read the KV names, shapes and dtypes from the graph; refuse graphs without a cache."""
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        self._past = sorted(
            (n for n in inputs if n.startswith("past_key_values.")), key=_layer_order
        )
        self._present = ["present." + n.split(".", 1)[1] for n in self._past]
        missing = [
            n for n in ("input_ids", "attention_mask", "logits") if n not in {**inputs, **outputs}
        ]
        missing += [n for n in self._present if n not in outputs]
        if missing or not self._past:
            raise EdgerunError(
                f"{artifact.model_file} is not a decoder with KV cache (missing {', '.join(missing) or 'past_key_values.*'})",
                "export with task text-generation-with-past (edgerun export does)",
            )
        first = inputs[self._past[0]]
        self._kv_heads, self._head_dim = int(first.shape[1]), int(first.shape[3])
        self._kv_dtype = _NP_TYPES.get(first.type, np.float32)
        self._logits_dtype = _NP_TYPES.get(outputs["logits"].type, np.float32)
        self._logits_type = _ONNX_TYPES[self._logits_dtype]
        self._has_positions = "position_ids" in inputs
        vocab = outputs["logits"].shape[-1]
        self.vocab_size = (
            int(vocab) if isinstance(vocab, int) else int(artifact.config()["vocab_size"])
        )

    def kv_bytes_per_token(self) -> int:
        return len(self._past) * self._kv_heads * self._head_dim * np.dtype(self._kv_dtype).itemsize

    def _reserve(self, total: int) -> None:
        """Allocate both ping-pong buffer sets for `total` positions, unless already big enough."""
        if total <= self._capacity:
            return
        cap = -(-total // _CAPACITY_STEP) * _CAPACITY_STEP
        size = [self._kv_heads * cap * self._head_dim]
        make = self._binding.ort.OrtValue.ortvalue_from_shape_and_type
        sets = 1 if self._shared else 2
        self._buffers = [
            [make(size, self._kv_dtype, self._device, 0) for _ in self._past] for _ in range(sets)
        ]
        self._pointers = [[b.data_ptr() for b in bufs] for bufs in self._buffers]
        if self.can_verify:  # numpy views of the same memory, for rollback's repacking
            self._views = [
                [_host_view(p, size[0], self._kv_dtype) for p in ptrs] for ptrs in self._pointers
            ]
        self._mask = np.ones((1, cap), np.int64)
        self._mask_ptr = self._mask.ctypes.data
        self._capacity = cap
        if self._shared:  # one buffer per K/V, same pointer and shape for past and present
            b, dtype = self._binding, _ONNX_TYPES[self._kv_dtype]
            shape = (1, self._kv_heads, cap, self._head_dim)
            for past, present, ptr in zip(
                self._past, self._present, self._pointers[0], strict=True
            ):
                b.bind_input(past, b.dev, dtype, shape, ptr)
                b.bind_output(present, b.dev, dtype, shape, ptr)

    def _bind_cache(self, past: int, new: int) -> None:
        """Bind past (read) and present (written) for this step: 4 x layers binds, the main
        per-token Python cost, so the loop body is kept to bare calls."""
        b, dtype = self._binding, _ONNX_TYPES[self._kv_dtype]
        if self._shared:
            b.bind_input("attention_mask", b.cpu, 7, (1, past + new), self._mask_ptr)
            return
        bind_input, bind_output, dev = b.bind_input, b.bind_output, b.dev
        src, dst = self._pointers[self._flip], self._pointers[1 - self._flip]
        past_shape = (1, self._kv_heads, past, self._head_dim)
        present_shape = (1, self._kv_heads, past + new, self._head_dim)
        for name, ptr in zip(self._past, src, strict=True):
            bind_input(name, dev, dtype, past_shape, ptr)
        for name, ptr in zip(self._present, dst, strict=True):
            bind_output(name, dev, dtype, present_shape, ptr)
        bind_input("attention_mask", b.cpu, 7, (1, past + new), self._mask_ptr)

    def prefill(self, ids: Sequence[int], total: int) -> np.ndarray:
        self._reserve(max(total, len(ids)))
        self._flip, self._length = 0, 0
        return self._run_chunked(ids)

    def verify(self, ids: Sequence[int]) -> np.ndarray:
        if self._length + len(ids) > self._capacity:
            raise EdgerunError(
                f"the KV cache is full ({self._capacity} positions)", "ask for fewer tokens"
            )
        return self._run_many(ids)

    def rollback(self, length: int) -> None:
        if not 0 <= length <= self._length:
            raise ValueError(f"cannot roll back to {length} of {self._length} positions")
        if length < self._length and not self._shared:
            # present was written as [heads, length_now, dim]: repack the kept rows (a copy)
            # into the other buffer set, which then becomes the past.
            src, dst = self._views[self._flip], self._views[1 - self._flip]
            shape, keep = (self._kv_heads, -1, self._head_dim), length * self._head_dim
            for a, b in zip(src, dst, strict=True):
                old = a[: self._kv_heads * self._length * self._head_dim].reshape(shape)
                b[: self._kv_heads * keep].reshape(shape)[:] = old[:, :length]
            self._flip = 1 - self._flip
        self._length = length  # the shared buffer: later writes overwrite what lies beyond

    def resume(self, state: Any, keep: int, ids: Sequence[int], total: int) -> np.ndarray:
        self._reserve(max(total, len(ids)))
        self._flip = 0
        for i, ptr in enumerate(self._pointers[0]):
            self._kv_view(ptr, keep)[:, :keep] = state[i, :, :keep]
        self._length = keep
        return self._run_chunked(ids[keep:])

    def _run_chunked(self, ids: Sequence[int]) -> np.ndarray:
        """The logits after the last of `ids`, appended in passes whose logits stay within
        PREFILL_LOGITS_BYTES: the graph computes logits for every position it is given (a
        4,000-token prompt of a 151,936-token vocabulary is 2.4 GB of fp32 logits, and the
        head's activations as much again, in one pass). No pass is a single token unless
        `ids` is: onnxruntime's one-row kernels round differently from its several-row ones,
        which agree with each other (benchmarks/verify_drift.py), so the cut changes nothing."""
        step = max(2, PREFILL_LOGITS_BYTES // max(self.vocab_size * self._logits.itemsize, 1))
        n, start = len(ids), 0
        while True:
            end = min(start + step, n)
            if n - end == 1:
                end = n  # the last token goes with the pass before it
            last = self._run_many(ids[start:end])[-1]
            if end >= n:
                return last
            start = end

    def snapshot(self, length: int | None = None) -> tuple[Any, int] | None:
        """The first `length` (None: all) cached positions of every K/V buffer, as one
        [2 x layers, heads, positions, head_dim] array (CPU buffers only)."""
        n = self._length if length is None else min(length, self._length)
        if self._device != "cpu" or n == 0:
            return None
        out = np.empty((len(self._past), self._kv_heads, n, self._head_dim), self._kv_dtype)
        for i, ptr in enumerate(self._pointers[0 if self._shared else self._flip]):
            out[i] = self._kv_view(ptr, self._length)[:, :n]
        return out, int(out.nbytes)

    def _kv_view(self, ptr: int, length: int) -> np.ndarray:
        """A [heads, stride, head_dim] numpy view of the buffer at `ptr` holding `length`
        positions: the shared buffer keeps its capacity as stride, a ping-pong one is dense."""
        stride = self._capacity if self._shared else length
        flat = _host_view(ptr, self._kv_heads * stride * self._head_dim, self._kv_dtype)
        return flat.reshape(self._kv_heads, stride, self._head_dim)

    def _run_many(self, ids: Sequence[int]) -> np.ndarray:
        """Append `ids` after the cached positions in one run; logits [n, vocab] for each."""
        n, past = len(ids), self._length
        ids_arr = np.asarray(ids, np.int64).reshape(1, n)
        pos_arr = np.arange(past, past + n, dtype=np.int64).reshape(1, n)
        logits = np.empty((1, n, self.vocab_size), self._logits_dtype)
        b = self._binding
        b.bind_input("input_ids", b.cpu, 7, (1, n), ids_arr.ctypes.data)
        if self._has_positions:
            b.bind_input("position_ids", b.cpu, 7, (1, n), pos_arr.ctypes.data)
        b.bind_output("logits", b.cpu, self._logits_type, logits.shape, logits.ctypes.data)
        self._bind_cache(past, n)
        b.run()
        self._advance(n)
        # Every decode step has one new token: bind the fixed-size decode arrays again.
        b.bind_input("input_ids", b.cpu, 7, (1, 1), self._ids.ctypes.data)
        if self._has_positions:
            b.bind_input("position_ids", b.cpu, 7, (1, 1), self._pos.ctypes.data)
        b.bind_output(
            "logits", b.cpu, self._logits_type, self._logits.shape, self._logits.ctypes.data
        )
        return logits[0]

    def decode(self, token_id: int) -> np.ndarray:
        past = self._length
        if past >= self._capacity:
            raise EdgerunError(
                f"the KV cache is full ({self._capacity} positions)", "ask for fewer tokens"
            )
        self._ids[0, 0] = token_id
        self._pos[0, 0] = past
        self._bind_cache(past, 1)
        self._binding.run()
        self._advance(1)
        return self._logits[0, 0]

    def _advance(self, n: int) -> None:
        self._length += n
        if not self._shared:
            self._flip = 1 - self._flip

    def close(self) -> None:
        self._buffers = []
        self._pointers = []
        self._views = []
        self._capacity = 0
        self.__dict__.pop("_binding", None)
        self.__dict__.pop("session", None)


class _Binding:
    """IOBinding through the pybind objects the public wrapper holds: the wrapper re-creates an
    OrtDevice and updates bookkeeping dicts on every bind, which is most of the per-token Python
    cost with 4 x layers binds per step. Falls back to the public API if the internals move."""

    def __init__(self, ort: Any, session: Any, device: str) -> None:
        self.ort = ort
        public = session.io_binding()
        self._public = public
        try:
            self.dev = ort.OrtDevice.make(device, 0)._get_c_device()
            self.cpu = ort.OrtDevice.make("cpu", 0)._get_c_device()
            raw, run = public._iobinding, session._sess.run_with_iobinding
        except AttributeError:  # pragma: no cover - a future onnxruntime renamed its internals
            self.dev, self.cpu = device, "cpu"
            self.bind_input = lambda n, d, t, s, p: public.bind_input(n, d, 0, t, s, p)
            self.bind_output = lambda n, d, t, s, p: public.bind_output(n, d, 0, t, s, p)
            self.run = lambda: session.run_with_iobinding(public)
            return
        # bound pybind methods, called without a Python wrapper in between
        self.bind_input, self.bind_output = raw.bind_input, raw.bind_output
        self.run = lambda: run(raw, None)


def _host_view(pointer: int, size: int, dtype: Any) -> np.ndarray:
    """A flat numpy view of `size` elements of host memory owned by an OrtValue."""
    import ctypes

    raw = (ctypes.c_byte * (size * np.dtype(dtype).itemsize)).from_address(pointer)
    return np.frombuffer(raw, dtype)


def _shared_buffer_graph(artifact: Artifact) -> bool:
    """Whether a genai-built graph is a plain decoder this loop can drive: GroupQueryAttention
    with in-place cache, the standard input / output names, nothing but a decoder."""
    import json

    path = artifact.path / "genai_config.json"
    try:
        config = json.loads(path.read_text())
        model, decoder = config["model"], config["model"]["decoder"]
        shared = bool(config["search"]["past_present_share_buffer"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    expected = {
        "input_ids": "input_ids",
        "attention_mask": "attention_mask",
        "past_key_names": "past_key_values.%d.key",
        "past_value_names": "past_key_values.%d.value",
        "logits": "logits",
        "present_key_names": "present.%d.key",
        "present_value_names": "present.%d.value",
    }
    names = {**decoder.get("inputs", {}), **decoder.get("outputs", {})}
    only_decoder = not (set(model) & {"vision", "speech", "embedding", "encoder"})
    return shared and only_decoder and names == expected


def _layer_order(name: str) -> tuple[int, str]:
    """past_key_values.10.key sorts after past_key_values.9.value."""
    _, layer, kind = name.split(".")
    return int(layer), kind


def _session_options(ort: Any, settings: Settings) -> Any:
    """SessionOptions from the settings: threads, graph optimisation level, session config entries."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if settings.threads:
        opts.intra_op_num_threads = settings.threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    level = settings.options.get("graph_optimization_level", "ORT_ENABLE_ALL")
    try:
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    except AttributeError:
        raise EdgerunError(
            f"unknown graph_optimization_level '{level}'",
            "use ORT_DISABLE_ALL, ORT_ENABLE_BASIC, ORT_ENABLE_EXTENDED or ORT_ENABLE_ALL",
        ) from None
    for key, value in settings.options.items():
        if key == "session_config":
            for entry, setting in value.items():
                opts.add_session_config_entry(str(entry), str(setting))
        elif key not in ("graph_optimization_level", "accuracy_level", "map_prepacked"):
            if not hasattr(opts, key):
                raise EdgerunError(
                    f"unknown onnxruntime option '{key}'",
                    "use a SessionOptions attribute, graph_optimization_level, accuracy_level,"
                    " map_prepacked or session_config",
                )
            setattr(opts, key, value)
    return opts
