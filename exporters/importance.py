"""Importance statistics (an "imatrix"): per linear layer, per input column, the mean square of
the activations that reach it on the calibration text.

Gathered once per export (`measure`, the one gatherer) with forward hooks on every nn.Linear (and
Hugging Face's Conv1D) of the checkpoint run layer by layer from its safetensors
(edgerun.exporters.stream: one decoder layer's weights in memory, never the whole fp32 model)
over the shipped calibration text (exporters/data/calib.txt or --calib-text; never the
evaluation text). Each hook adds sum(x^2) over the tokens of a batch into a float64 vector of its
module, so memory is one vector per layer, never an activation. While a layer's weights are
loaded a caller may take what it needs of them (q4-mixed's layer-by-layer calibration takes the
4-bit error per column: edgerun.exporters.onnx.importance). The statistics are keyed by the
reference's module names and mapped to what each quantizer calls the same weight: ONNX MatMul
nodes by their decoder role (recipes.node_role; fused qkv / gate_up nodes share their inputs with
q / gate) and GGUF tensor names through gguf-py's TensorNameMap
(edgerun.exporters.gguf.imatrix).

Saved as safetensors ({module name: float32 mean-square vector}, metadata: text sha256, tokens)
in the export's scratch directory, measured by the first stage that asks for them and reused by
the others; an artifact quantized with them carries a copy (IMPORTANCE_FILE) and its manifest
records the text hash and token count.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from edgerun.core.errors import EdgerunError
from edgerun.exporters.onnx.recipes import node_role
from edgerun.exporters.onnx.sensitivity import FUSED

if TYPE_CHECKING:  # pragma: no cover
    from edgerun.exporters.formats import ExportContext

IMPORTANCE_FILE = "importance.safetensors"
WINDOW = 512  # tokens per window of the calibration text
# as many as the --target-kl search reads (onnx.target: 4 windows of 256)
MIN_CALIBRATION_TOKENS = 1024
HEAD_ROWS = 128  # tokens per lm_head call: its logits are tokens x vocabulary floats


T = TypeVar("T")


def by_role(by_module: dict[str, T]) -> dict[str, T]:
    """Module name -> x, keyed instead by builder-neutral role ("L3.q", "L3.qkv", "lm_head",
    recipes.NodeRole.key); a fused graph role gets the x of a module it fuses (same input)."""
    out: dict[str, T] = {}
    for name, x in by_module.items():
        role = node_role(name)
        if role is None:
            continue
        out.setdefault(role.key, x)
        if role.role in FUSED and role.layer is not None:
            out.setdefault(f"L{role.layer}.{FUSED[role.role]}", x)
    return out


@dataclass
class Importance:
    """Mean square of each linear layer's input columns over `tokens` calibration tokens."""

    values: dict[str, np.ndarray]  # module name -> float32 [in_features]
    tokens: int
    text_sha256: str

    def by_role(self) -> dict[str, np.ndarray]:
        """Builder-neutral key ("L3.q", "L3.qkv", "lm_head", see recipes.NodeRole.key) ->
        vector; a fused graph role gets the vector of a module it fuses (same input)."""
        return by_role(self.values)

    def for_node(self, node_name: str) -> np.ndarray | None:
        """The vector of an ONNX MatMul node (by its decoder role), None when none matches."""
        role = node_role(node_name)
        return None if role is None else self.by_role().get(role.key)

    def record(self) -> dict[str, Any]:
        """The manifest's note of these statistics."""
        return {
            "file": IMPORTANCE_FILE,
            "statistic": "mean of x^2 per input column of every linear layer",
            "calibration_text_sha256": self.text_sha256,
            "tokens": self.tokens,
            "layers": len(self.values),
        }

    def save(self, path: Path) -> None:
        """Write the safetensors file (float32 vectors, tokens and text hash as metadata)."""
        from safetensors.numpy import save_file

        tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in self.values.items()}
        meta = {"tokens": str(self.tokens), "calibration_text_sha256": self.text_sha256}
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: Path) -> Importance:
        """Read a file written by `save`; EdgerunError when it is not one."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                values = {k: np.asarray(f.get_tensor(k), dtype=np.float32) for k in f.keys()}  # noqa: SIM118
            tokens = int(meta["tokens"])
            text_sha = str(meta["calibration_text_sha256"])
        except (OSError, KeyError, ValueError, SafetensorError) as exc:
            raise EdgerunError(
                f"{path} is not an edgerun importance file: {exc}", "delete it and export again"
            ) from exc
        if any(v.ndim != 1 or not np.isfinite(v).all() for v in values.values()):
            raise EdgerunError(f"{path} holds a malformed importance vector", "export again")
        return cls(values, tokens, text_sha)


def _linear_types() -> tuple[type, ...]:
    import torch

    types: list[type] = [torch.nn.Linear]
    try:
        from transformers.pytorch_utils import Conv1D

        types.append(Conv1D)
    except ImportError:  # pragma: no cover - transformers always has it today
        pass
    return tuple(types)


class _Stats:
    """A forward hook: running sum of one linear layer's input squares (float64) and rows (with
    `gram`, of x^T x too); the first time it fires (the layer's weights are loaded then)
    `on_weight(name, weight)` runs."""

    def __init__(self, name: str, on_weight: WeightFn | None, gram: bool = False) -> None:
        self.name, self.on_weight = name, on_weight
        self.sum_sq: np.ndarray | None = None
        self.rows = 0
        self.extra: Any = None
        self.gram: Any = 0 if gram else None

    def __call__(self, module: Any, args: Any, output: Any) -> None:
        x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
        sq = (x * x).sum(0).numpy()
        self.sum_sq = sq if self.sum_sq is None else self.sum_sq + sq
        if self.gram is not None:
            xf = x.float()
            self.gram = self.gram + xf.T @ xf
        if self.on_weight is not None and not self.rows:
            self.extra = self.on_weight(self.name, module.weight.detach().numpy())
        self.rows += x.shape[0]

    @property
    def mean_sq(self) -> np.ndarray:
        assert self.sum_sq is not None
        return (self.sum_sq / max(self.rows, 1)).astype(np.float32)


WeightFn = Callable[[str, np.ndarray], Any]


def measure(
    streamed: Any,
    windows: list[np.ndarray],
    on_weight: WeightFn | None = None,
    grams: dict[str, np.ndarray] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any], int]:
    """The one gatherer: run a StreamedModel (edgerun.exporters.stream, one decoder layer's
    weights in memory) over token windows with a hook on every linear layer. Returns (module
    name -> float32 mean of x^2 per input column, module name -> what `on_weight(name, weight
    [out, in])` returned while that layer's weights were loaded, tokens). Keeps no activation
    beyond the stream's own batch; a layer that never ran (an unrouted expert) is left out.
    Given a dict `grams`, fills it with module name -> float32 X^T X / tokens [in, in] (the
    second moments GPTQ needs: edgerun.exporters.onnx.gptq), one per distinct input (a module
    whose input another's already is, k / v / up, is left out: gram_key finds the holder)."""
    types = _linear_types()
    stats = {
        name: _Stats(name, on_weight, grams is not None and gram_key(name) == name)
        for name, module in streamed.model.named_modules()
        if isinstance(module, types)
    }
    modules = dict(streamed.model.named_modules())
    handles = [modules[name].register_forward_hook(hook) for name, hook in stats.items()]
    try:
        hidden = streamed.hidden_states(windows)
        with streamed.pinned(streamed.head_modules()):
            for ids, state in zip(windows, hidden, strict=True):
                for i in range(0, len(ids), HEAD_ROWS):  # logits of HEAD_ROWS tokens at a time
                    streamed.logits(ids[i : i + HEAD_ROWS], state[:, i : i + HEAD_ROWS])
    finally:
        for handle in handles:
            handle.remove()
    ran = {name: s for name, s in stats.items() if s.rows}
    values = {name: s.mean_sq for name, s in ran.items()}
    for name, s in ran.items():
        if grams is not None and s.gram is not None:
            grams[name] = (s.gram / s.rows).numpy()
            s.gram = None
    return values, {name: s.extra for name, s in ran.items()}, sum(len(w) for w in windows)


# a module whose input is another module's (the same tensor reaches both): the holder's last name
SHARED_INPUT = {"k_proj": "q_proj", "v_proj": "q_proj", "up_proj": "gate_proj"}


def gram_key(name: str) -> str:
    """The module whose second moments module `name` reads (itself unless SHARED_INPUT)."""
    head, dot, last = name.rpartition(".")
    return f"{head}{dot}{SHARED_INPUT[last]}" if last in SHARED_INPUT else name


def calibration_ids(ctx: ExportContext, minimum: int) -> tuple[np.ndarray, str]:
    """(token ids of the calibration text: the shipped one unless --calib-text, that text);
    EdgerunError when it has fewer than `minimum` tokens."""
    from edgerun.exporters.onnx.sensitivity import CALIB_TEXT
    from edgerun.exporters.reference import eval_token_ids, read_text_file

    text = read_text_file(ctx.options.calib_text, CALIB_TEXT, "calibration text", "--calib-text")
    ids = np.asarray(eval_token_ids(ctx.reference.tokenizer, text), dtype=np.int64)
    if len(ids) < minimum:
        raise EdgerunError(
            f"the calibration text has {len(ids)} tokens; at least {minimum} are needed",
            "pass a longer --calib-text file",
        )
    return ids, text


def calibration(ctx: ExportContext) -> tuple[list[np.ndarray], str]:
    """(the calibration text's token windows of WINDOW tokens, fewer where the model's context
    is shorter, the text's sha256)."""
    ids, text = calibration_ids(ctx, MIN_CALIBRATION_TOKENS)
    step = min(WINDOW, _positions(ctx.checkpoint.path) or WINDOW)
    windows = [ids[i : i + step] for i in range(0, len(ids), step)]
    return windows, hashlib.sha256(text.encode("utf-8")).hexdigest()


def _positions(checkpoint: Path) -> int | None:
    """The checkpoint's trained context from config.json (learned position tables such as
    GPT-2's n_positions cannot index past it), or None."""
    from edgerun.core.untrusted import read_json_object

    config = read_json_object(checkpoint / "config.json", "point to a Hugging Face model directory")
    text = config.get("text_config")
    text = text if isinstance(text, dict) else config
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = text.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return None


def store(ctx: ExportContext, values: dict[str, np.ndarray], tokens: int, sha: str) -> Importance:
    """Keep statistics measured on `calibration(ctx)` as this export's (the scratch file)."""
    found = Importance(values, tokens, sha)
    found.save(Path(ctx.scratch) / IMPORTANCE_FILE)
    return found


def gather(ctx: ExportContext, grams: bool = False) -> Importance:
    """The importance statistics of this export: measured layer by layer on the calibration text
    the first time a format asks (or the budget recipe's calibration measured them: cached in
    the scratch directory), loaded from there afterwards. With `grams`, the same pass also
    keeps each linear input's second moments (GRAM_FILE in the scratch directory) when
    they fit GRAM_LIMIT; `grams_of(ctx)` reads them."""
    from edgerun.exporters.stream import StreamedModel

    cached, gram_file = Path(ctx.scratch) / IMPORTANCE_FILE, Path(ctx.scratch) / GRAM_FILE
    if cached.is_file() and (not grams or gram_file.is_file()):
        return Importance.load(cached)
    windows, sha = calibration(ctx)
    tokens = sum(len(w) for w in windows)
    held: dict[str, np.ndarray] | None
    with StreamedModel(ctx.reference.path) as streamed:
        held = {} if grams and gram_bytes(streamed.model) <= GRAM_LIMIT else None
    if cached.is_file() and held is None:
        return Importance.load(cached)
    what = " and second moments" if held is not None else ""
    with (
        ctx.stage(
            f"importance statistics{what} (calibration text, {tokens} tokens, layer by layer)"
        ) as detail,
        StreamedModel(ctx.reference.path, on_unit=detail) as streamed,
    ):
        values, _, tokens = measure(streamed, windows, grams=held)
    if held:
        Grams.save(held, gram_file)
    return store(ctx, values, tokens, sha)


def grams_of(ctx: ExportContext) -> Any:
    """The export's second moments (Grams) measured by `gather(ctx, grams=True)`, or None
    when they were not (past GRAM_LIMIT)."""
    path = Path(ctx.scratch) / GRAM_FILE
    return Grams(path) if path.is_file() else None


def attach(ctx: ExportContext, out_dir: Path) -> dict[str, Any]:
    """Copy this export's statistics into an artifact directory; return the manifest note."""
    found = gather(ctx)
    shutil.copyfile(Path(ctx.scratch) / IMPORTANCE_FILE, Path(out_dir) / IMPORTANCE_FILE)
    return found.record()


# The second moments GPTQ rounds with (edgerun.exporters.onnx.gptq), as the gatherer keeps them.
GRAM_FILE = "gram.safetensors"  # in the export's scratch directory, never in an artifact
# Second moments are kept for all layers until the gatherer ends (one [in, in] float32 matrix
# per distinct linear input): 0.40 GB on SmolLM2-135M, 2.5 GB on Qwen2.5-0.5B's shape. Past this
# the export rounds by the importance-weighted search alone and says so in the manifest.
GRAM_LIMIT = 1 << 30


def gram_bytes(model: Any) -> int:
    """Bytes of the float32 second-moment matrices the gatherer keeps for `model`'s linear
    layers (importance.gram_key: one per distinct input); works on a meta-device skeleton."""
    types = _linear_types()
    total = 0
    for name, module in model.named_modules():
        if isinstance(module, types) and gram_key(name) == name:
            width: Any = getattr(module, "in_features", None) or getattr(module, "nx", 0)
            total += 4 * int(width) ** 2
    return total


class Grams:
    """The export's second moments (GRAM_FILE), read one matrix at a time by ONNX node name."""

    def __init__(self, path: Path) -> None:
        from safetensors import safe_open

        self.path = path
        with safe_open(str(path), framework="numpy") as f:
            names = list(f.keys())  # noqa: SIM118  (safe_open is not a mapping)
        modules = {name: name for name in names}
        for name in names:  # k / v / up read the matrix of q / gate (the same input)
            head, dot, last = name.rpartition(".")
            for alias in (a for a, holder in SHARED_INPUT.items() if holder == last):
                modules[f"{head}{dot}{alias}"] = name
        self.keys = by_role(modules)

    def for_node(self, node_name: str) -> np.ndarray | None:
        """The [K, K] matrix of a MatMul node's input (by its decoder role), or None."""
        from safetensors import safe_open

        from edgerun.exporters.onnx.recipes import node_role

        role = node_role(node_name)
        name = None if role is None else self.keys.get(role.key)
        if name is None:
            return None
        with safe_open(str(self.path), framework="numpy") as f:
            return np.asarray(f.get_tensor(name), dtype=np.float64)

    @staticmethod
    def save(grams: dict[str, np.ndarray], path: Path) -> None:
        """Write module name -> float32 [in, in] matrices (importance.measure's `grams`)."""
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v, np.float32) for k, v in grams.items()}, str(path))
