"""Importance statistics (an "imatrix"): per linear layer, per input column, the mean square of
the activations that reach it on the calibration text.

Gathered once per export with forward hooks on every nn.Linear (and Hugging Face's Conv1D) of
the PyTorch reference over the shipped calibration text (exporters/data/calib.txt or
--calib-text; never the evaluation text). Each hook adds sum(x^2) over the tokens of a window
into a float64 vector of its module, so memory is one vector per layer, never an activation.
The statistics are keyed by the reference's module names and mapped to what each quantizer
calls the same weight: ONNX MatMul nodes by their decoder role (recipes.node_role; fused
qkv / gate_up nodes share their inputs with q / gate) and GGUF tensor names through gguf-py's
TensorNameMap (edgerun.exporters.gguf.imatrix).

Saved as safetensors ({module name: float32 mean-square vector}, metadata: text sha256, tokens)
in the export's scratch directory, computed by the first format that asks for it and reused by
the others; an artifact quantized with it carries a copy (IMPORTANCE_FILE).
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from edgerun.exporters.onnx.recipes import node_role
from edgerun.exporters.onnx.sensitivity import FUSED

from edgerun.errors import EdgerunError

if TYPE_CHECKING:  # pragma: no cover
    from edgerun.exporters.formats import ExportContext

IMPORTANCE_FILE = "importance.safetensors"
WINDOW = 512  # tokens per forward pass of the calibration text


@dataclass
class Importance:
    """Mean square of each linear layer's input columns over `tokens` calibration tokens."""

    values: dict[str, np.ndarray]  # module name -> float32 [in_features]
    tokens: int
    text_sha256: str

    def by_role(self) -> dict[str, np.ndarray]:
        """Builder-neutral key ("L3.q", "L3.qkv", "lm_head", see recipes.NodeRole.key) ->
        vector; a fused graph role gets the vector of a module it fuses (same input)."""
        out: dict[str, np.ndarray] = {}
        for name, vector in self.values.items():
            role = node_role(name)
            if role is None:
                continue
            out.setdefault(role.key, vector)
            if role.role in FUSED and role.layer is not None:
                out.setdefault(f"L{role.layer}.{FUSED[role.role]}", vector)
        return out

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


def collect(model: Any, windows: list[np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
    """Run `model` over token windows with a hook on every linear layer; return (module name ->
    float32 mean of x^2 per input column, tokens). Accumulates in float64, keeps no activation."""
    import torch

    sums: dict[str, Any] = {}
    counts: dict[str, int] = {}

    def hook(name: str) -> Any:
        def record(module: Any, inputs: tuple[Any, ...], output: Any) -> None:
            x = inputs[0].detach()
            flat = x.reshape(-1, x.shape[-1])
            total = flat.double().square().sum(0)
            sums[name] = total if name not in sums else sums[name] + total
            counts[name] = counts.get(name, 0) + flat.shape[0]

        return record

    types = _linear_types()
    linears: list[tuple[str, Any]] = [
        (name, module) for name, module in model.named_modules() if isinstance(module, types)
    ]
    handles = [module.register_forward_hook(hook(name)) for name, module in linears]
    tokens = 0
    try:
        with torch.inference_mode():
            for ids in windows:
                model(input_ids=torch.from_numpy(ids[None, :]), use_cache=False)
                tokens += len(ids)
    finally:
        for handle in handles:
            handle.remove()
    means = {k: (v / max(counts[k], 1)).float().numpy() for k, v in sums.items()}
    return means, tokens


def gather(ctx: ExportContext) -> Importance:
    """The importance statistics of this export: computed on the calibration text the first
    time a format asks (cached in the scratch directory), loaded from there afterwards."""
    cached = Path(ctx.scratch) / IMPORTANCE_FILE
    if cached.is_file():
        return Importance.load(cached)
    from edgerun.exporters.onnx.sensitivity import CALIB_TEXT
    from edgerun.exporters.onnx.target import calibration_ids
    from edgerun.exporters.reference import read_text_file

    text = read_text_file(ctx.options.calib_text, CALIB_TEXT, "calibration text", "--calib-text")
    ids = calibration_ids(ctx)
    windows = [ids[i : i + WINDOW] for i in range(0, len(ids), WINDOW)]
    with ctx.stage(f"importance statistics (calibration text, {len(ids)} tokens)"):
        values, tokens = collect(ctx.reference.model, windows)
    found = Importance(values, tokens, hashlib.sha256(text.encode("utf-8")).hexdigest())
    found.save(cached)
    return found


def attach(ctx: ExportContext, out_dir: Path) -> dict[str, Any]:
    """Copy this export's statistics into an artifact directory; return the manifest note."""
    found = gather(ctx)
    shutil.copyfile(Path(ctx.scratch) / IMPORTANCE_FILE, Path(out_dir) / IMPORTANCE_FILE)
    return found.record()
