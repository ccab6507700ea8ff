"""Run a Hugging Face causal LM one unit at a time: the model's own modules, only one decoder
layer's weights in memory.

The skeleton is built on the meta device (accelerate's init_empty_weights: parameters on meta,
buffers such as rotary frequencies computed for real), so every family keeps its own forward:
rotary embeddings, masks, sliding windows, soft-capping, multipliers. A unit is a decoder layer
or any other module that owns parameters directly (embedding, final norm, lm_head, learned
positions). A forward-pre hook materializes a unit's weights in fp32 from the safetensors files
(one tensor at a time, sharded checkpoints through their index), a forward hook drops them again.
Driving the model's forward with hooks, rather than calling layers by hand, is what makes it
work across the families of edgerun.exporters.families: their layers take different arguments
(position embeddings, per-layer masks, NoPE layers) that only the model's own forward builds.

All evaluation windows of one length go through the base model as one batch, so each layer is
read once per batch (StreamedModel.hidden_states); the head (lm_head plus the family's logit
post-processing) then runs window by window on those hidden states (StreamedModel.logits).
Heavy imports (torch, transformers, safetensors) stay inside the functions.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgerun.core.errors import EdgerunError, require

INDEX_FILE = "model.safetensors.index.json"
MAX_INDEX_BYTES = 64 << 20
# Tokens per batch of windows through the base model: bounds the activations (hidden states and
# one layer's intermediates) while reading each layer as few times as possible.
BATCH_TOKENS = 4096
# A dropped unit this large (bytes) runs the cycle collector before the heap trim.
COLLECT_BYTES = 64 << 20


def weight_map(path: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it (sharded checkpoints through their index);
    EdgerunError when the checkpoint has no safetensors weights."""
    from safetensors import safe_open

    index = path / INDEX_FILE
    if index.is_file():
        if index.stat().st_size > MAX_INDEX_BYTES:
            raise EdgerunError(f"{index} is too large to be a weight index", "check the checkpoint")
        names = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        files = {str(k): (path / str(v)).resolve() for k, v in names.items()}
        if any(f.parent != path.resolve() for f in files.values()):
            raise EdgerunError(f"{index} names files outside {path}", "check the checkpoint")
        return files
    found: dict[str, Path] = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            found.update({key: file for key in handle.keys()})  # noqa: SIM118 (not a dict)
    if not found:
        raise EdgerunError(
            f"{path} has no safetensors weights", "save the checkpoint as safetensors"
        )
    return found


class StreamedModel:
    """An HF causal LM whose weights live on disk until a unit's forward needs them.

    `on_unit(name)` is called as each unit starts (progress). Use it as a context manager, or
    call close() to remove the hooks.
    """

    def __init__(self, path: Path, on_unit: Callable[[str], None] | None = None) -> None:
        require("torch", "export")
        self.path = Path(path)
        self.files = weight_map(self.path)
        self.model = _skeleton(self.path)
        self.base, self.layers = _decoder(self.model)
        self._output_type: Any = None
        self.on_unit = on_unit or (lambda name: None)
        self._aliases = _aliases(self.model)
        self._names = {id(m): n for n, m in self.model.named_modules(remove_duplicate=False)}
        self._pinned: set[int] = set()
        self._handles: list[Any] = []
        self._units = _units(self.model, self.layers)
        # called as each parameter is materialized: (qualified name, checkpoint key, parameter)
        self.on_load: Callable[[str, str, Any], None] | None = None
        for i, (name, module) in enumerate(self._units):
            label = f"{name} ({i + 1}/{len(self._units)})"  # a count for the progress line's ETA
            self._handles.append(module.register_forward_pre_hook(self._pre(label, module)))
            self._handles.append(module.register_forward_hook(self._post(module)))

    def __enter__(self) -> StreamedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove the hooks and drop every loaded weight."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for _, module in self._units:
            self.unload(module)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def _pre(self, name: str, module: Any) -> Callable[..., None]:
        def hook(mod: Any, args: Any) -> None:
            self.on_unit(name)
            self.load(module)

        return hook

    def _post(self, module: Any) -> Callable[..., None]:
        def hook(mod: Any, args: Any, output: Any) -> None:
            if id(module) not in self._pinned:
                self.unload(module)

        return hook

    def _params(self, module: Any) -> Iterator[tuple[Any, str, str]]:
        """(owner module, attribute, qualified name) of each parameter a unit materializes."""
        recurse = any(module is layer for layer in self.layers)
        for owner in module.modules() if recurse else [module]:
            for attr, param in owner._parameters.items():
                if param is not None:
                    base = self._names[id(owner)]
                    yield owner, attr, f"{base}.{attr}" if base else attr

    def load(self, module: Any) -> None:
        """Materialize the weights of one unit in fp32 (a no-op for those already loaded)."""
        import torch
        from safetensors import safe_open

        wanted = [(o, a, n) for o, a, n in self._params(module) if o._parameters[a].is_meta]
        by_file: dict[Path, list[tuple[Any, str, str]]] = {}
        for owner, attr, name in wanted:
            by_file.setdefault(self.files[self._key(name)], []).append((owner, attr, name))
        for file, entries in by_file.items():
            # opened per unit and closed after: a handle kept open would keep every page it
            # touched mapped into this process
            with safe_open(str(file), framework="pt") as handle:
                for owner, attr, name in entries:
                    tensor = handle.get_tensor(self._key(name)).to(torch.float32)
                    shape = owner._parameters[attr].shape
                    if tuple(tensor.shape) != tuple(shape):
                        raise EdgerunError(
                            f"{self.path}: tensor {name} has shape {tuple(tensor.shape)}, the"
                            f" config says {tuple(shape)}",
                            "check that config.json matches the weights",
                        )
                    param = torch.nn.Parameter(tensor, requires_grad=False)
                    owner._parameters[attr] = param
                    if self.on_load is not None:
                        self.on_load(name, self._key(name), param)

    def unload(self, module: Any) -> None:
        """Drop the weights of one unit (back to meta tensors) and give their memory back."""
        import torch

        dropped = 0
        for owner, attr, _ in list(self._params(module)):
            param = owner._parameters[attr]
            if not param.is_meta:
                empty = torch.empty(param.shape, dtype=param.dtype, device="meta")
                owner._parameters[attr] = torch.nn.Parameter(empty, requires_grad=False)
                dropped += param.numel() * param.element_size()
        if dropped:
            give_back_memory(collect=dropped >= COLLECT_BYTES)

    def names_of(self, name: str) -> list[str]:
        """Every parameter name of the tensor called `name` (tied embeddings: two), itself first."""
        return self._aliases.get(name, [name])

    def _key(self, name: str) -> str:
        """The checkpoint's name for a parameter: itself, a tied alias, or without the base
        model's prefix (older checkpoints)."""
        prefix = f"{self.model.base_model_prefix}."
        for candidate in self._aliases.get(name, [name]):
            for key in (candidate, candidate.removeprefix(prefix)):
                if key in self.files:
                    return key
        raise EdgerunError(
            f"{self.path}: the weights have no tensor {name}",
            "check that config.json matches the weights",
        )

    @contextlib.contextmanager
    def pinned(self, modules: Sequence[Any]) -> Iterator[None]:
        """Keep `modules` loaded across forwards (the head, run once per window)."""
        for module in modules:
            self.load(module)
            self._pinned.add(id(module))
        try:
            yield
        finally:
            for module in modules:
                self._pinned.discard(id(module))
                self.unload(module)

    @contextlib.contextmanager
    def checkpointed(self) -> Iterator[None]:
        """While open, each decoder layer keeps nothing for a backward pass but its input, and
        runs again (loading its weights again) when the backward pass reaches it, so gradients
        flow through the model one layer's weights at a time (torch's reentrant checkpoint: the
        recomputed forward builds its own graph, and the weights it loaded go with it)."""
        import torch

        holder = next(
            m
            for m in self.model.modules()
            if isinstance(m, torch.nn.ModuleList) and list(m) == self.layers
        )
        for i, layer in enumerate(self.layers):
            holder[i] = _Recomputed(layer)
        try:
            yield
        finally:
            for i, layer in enumerate(self.layers):
                holder[i] = layer

    def hidden_states(self, windows: Sequence[np.ndarray]) -> list[Any]:
        """The base model's last hidden state (after its final norm) of each window, windows of
        one length batched together (at most BATCH_TOKENS tokens a batch)."""
        import torch

        out: list[Any] = [None] * len(windows)
        for batch in _batches(windows):
            ids = torch.from_numpy(np.stack([windows[i] for i in batch]).astype(np.int64))
            with torch.inference_mode():
                output = self.base(input_ids=ids, use_cache=False)
            self._output_type, hidden = type(output), output.last_hidden_state
            for row, i in enumerate(batch):
                out[i] = hidden[row : row + 1].clone()
        return out

    def logits(self, ids: np.ndarray, hidden: Any) -> np.ndarray:
        """The model's logits [len, vocab] for one window from its hidden states: the CausalLM
        forward (lm_head, soft-capping, logit scales) with the base model answering `hidden` in
        the output class it answered hidden_states with."""
        import torch

        base, output = self.base, self._output_type
        base.forward = lambda *a, **k: output(last_hidden_state=hidden)
        try:
            with torch.inference_mode():
                out = self.model(input_ids=torch.from_numpy(ids[None, :].astype(np.int64)))
        finally:
            del base.forward
        return np.asarray(out.logits[0].float().numpy())

    def head_modules(self) -> list[Any]:
        """The units outside the base model (the lm_head and the like)."""
        inside = {id(m) for m in self.base.modules()}
        return [m for _, m in self._units if id(m) not in inside]


def _Recomputed(layer: Any) -> Any:  # noqa: N802  (a class made on first use: torch is heavy)
    """`layer` wrapped so that its forward is checkpointed (see StreamedModel.checkpointed);
    attributes the base model reads from its layers (e.g. attention_type) pass through."""
    import torch
    from torch.utils.checkpoint import checkpoint

    class Recomputed(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(self._modules["inner"], name)

        def forward(self, hidden: Any, *args: Any, **kwargs: Any) -> Any:
            if not hidden.requires_grad:  # nothing below needs a gradient: start the graph here
                hidden = hidden.detach().requires_grad_()

            def run(h: Any) -> Any:
                return self.inner(h, *args, **kwargs)

            return checkpoint(run, hidden, use_reentrant=True, preserve_rng_state=False)

    return Recomputed(layer)


def give_back_memory(collect: bool = True) -> None:
    """Return freed heap memory to the OS. glibc keeps freed blocks below its (self-raising)
    mmap threshold in the heap: without a trim, a layer-by-layer pass over the 0.40B
    Qwen2.5-0.5B shape grew by every layer it dropped (1.37 GB anonymous after 24 layers,
    0.26 GB with it). `collect`: run the cycle collector first (a full pass costs 0.1-3 s in a
    process that imported torch and transformers: worth it after a large unit, not a tiny one)."""
    import ctypes
    import gc

    if collect:
        gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _skeleton(path: Path) -> Any:
    """The model on the meta device (buffers real), fp32, eval mode."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from edgerun.sources.remote_code import no_remote_code

    try:
        with no_remote_code():  # a model's own code never runs (edgerun.sources.remote_code)
            config = AutoConfig.from_pretrained(path, trust_remote_code=False)
            with init_empty_weights():
                model = AutoModelForCausalLM.from_config(
                    config, dtype=torch.float32, trust_remote_code=False
                )
        # outside init_empty_weights, whose register_parameter makes a new tensor of every
        # assigned parameter (a tied head would then not share the embedding's name)
        model.tie_weights()
    except (ValueError, KeyError, OSError) as exc:
        raise cannot(path, "build", exc) from exc
    return model.eval()


def _decoder(model: Any) -> tuple[Any, list[Any]]:
    """(the base model, its decoder layers): the child of the CausalLM holding the longest
    ModuleList, and that list (the base_model_prefix does not name it in every family)."""
    import torch

    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise EdgerunError(
            f"{type(model).__name__} has no list of decoder layers",
            "this architecture cannot be run layer by layer",
        )
    layers = max(lists, key=len)
    base = next(c for c in model.children() if any(m is layers for m in c.modules()))
    return base, list(layers)


def _units(model: Any, layers: list[Any]) -> list[tuple[str, Any]]:
    """(name, module) of each unit: every decoder layer, and every module outside them that
    owns parameters itself."""
    in_layers = {id(m) for layer in layers for m in layer.modules()}
    layer_ids = {id(layer): i for i, layer in enumerate(layers)}
    units = []
    for name, module in model.named_modules():
        if id(module) in layer_ids:
            units.append((f"layer {layer_ids[id(module)] + 1}/{len(layers)}", module))
        elif id(module) not in in_layers and any(
            p is not None for p in module._parameters.values()
        ):
            units.append((name or "model", module))
    return units


def _aliases(model: Any) -> dict[str, list[str]]:
    """Parameter name -> every name of the same tensor (tied embeddings), itself first."""
    by_param: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        by_param.setdefault(id(param), []).append(name)
    return {
        name: [name, *(n for n in names if n != name)]
        for names in by_param.values()
        for name in names
    }


def _batches(windows: Sequence[np.ndarray]) -> list[list[int]]:
    """Window indices grouped by length, at most BATCH_TOKENS tokens (and one window) a batch."""
    by_len: dict[int, list[int]] = {}
    for i, w in enumerate(windows):
        by_len.setdefault(len(w), []).append(i)
    batches = []
    for length, indices in by_len.items():
        per = max(1, BATCH_TOKENS // length)
        batches += [indices[i : i + per] for i in range(0, len(indices), per)]
    return batches


def cannot(path: Path, verb: str, exc: Exception) -> EdgerunError:
    """The one-line error for transformers failing to `verb` ("load", "build") a checkpoint."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return EdgerunError(
        f"transformers cannot {verb} {path}: {first}",
        "pass a causal LM checkpoint of an architecture transformers supports",
    )
