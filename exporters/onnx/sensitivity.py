"""Per-layer quantization sensitivity and the search behind `--target-kl`.

A group of weights is one decoder projection of one layer, or the lm_head (the graph's MatMul
nodes, see recipes.node_role). Its sensitivity is the KL divergence from the fp32 reference
that its 4-bit error costs, estimated to second order from the Fisher information of the
PyTorch reference on the calibration text (fisher_sensitivity), with the error of onnxruntime's
own quantizer (the MLAS kernel that writes MatMulNBits, dequantized back to float here). The
calibration text (exporters/data/calib.txt) is never the validation text, so the export gate
stays held out.

The search ranks groups by sensitivity per extra byte that 8 bits would cost and raises the first
k of them to 8 bits, bisecting on k for the smallest plan whose *measured* calibration KL (the
reference with the plan's fake-quantized weights, Calibration.score) meets the target (the KL is
close to monotone in k; the search records every probe). Heavy imports stay inside the functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgerun.exporters.onnx.recipes import NodeRole, node_role
from edgerun.exporters.validate import log_softmax

CALIB_TEXT = Path(__file__).parent.parent / "data" / "calib.txt"
# torch Linear role -> the fused graph roles that contain it (onnxruntime-genai packs some).
FUSED = {"q": "qkv", "k": "qkv", "v": "qkv", "gate": "gate_up", "up": "gate_up"}


def dequantize(weight_kn: np.ndarray, bits: int, block_size: int, symmetric: bool) -> np.ndarray:
    """`weight_kn` [K, N] (a MatMul's B) quantized by onnxruntime's MatMulNBits quantizer and
    dequantized back to float32: exactly the weights the MatMulNBits kernel computes with."""
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    config = mnq.DefaultWeightOnlyQuantConfig(
        block_size=block_size, is_symmetric=symmetric, bits=bits
    )
    packed, scales, zero = mnq.DefaultWeightOnlyQuantizer(config).qbits_block_quant(
        np.ascontiguousarray(weight_kn, dtype=np.float32)
    )
    k, n = weight_kn.shape
    blocks = scales.shape[1]
    q = _unpack(packed, bits).reshape(n, blocks, block_size).astype(np.float32)
    if symmetric:
        zp = np.full((n, blocks), 1 << (bits - 1), dtype=np.float32)
    else:
        zp = _unpack(zero, bits)[:, :blocks].astype(np.float32)
    values = (q - zp[:, :, None]) * scales[:, :, None]
    return np.ascontiguousarray(values.reshape(n, blocks * block_size)[:, :k].T)


# Bytes of weight quantized at a time when measuring a quantization error (see _error_bands).
ERROR_CHUNK_BYTES = 64 << 20


def _error_bands(
    weight_nk: np.ndarray, bits: int, block_size: int, symmetric: bool, chunk_bytes: int
) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    """(rows, the weight's band, its squared quantization error) for bands of output rows of a
    Linear's weight [N, K]: exact, since the MatMulNBits blocks run along K within one row, and
    the copies stay near chunk_bytes (quantizing a vocabulary-sized head whole took about 7x its
    fp32 size: 6.9 GB peak on the Qwen2.5-1.5B shape)."""
    n, k = weight_nk.shape
    step = max(1, chunk_bytes // max(4 * k, 1))
    for start in range(0, n, step):
        rows = slice(start, min(start + step, n))
        band = np.asarray(weight_nk[rows], dtype=np.float32)
        deq = dequantize(band.T, bits, block_size, symmetric).T
        yield rows, band, np.square(deq - band, dtype=np.float64)


def column_error(
    weight_nk: np.ndarray, bits: int, block_size: int, symmetric: bool,
    chunk_bytes: int = ERROR_CHUNK_BYTES,
) -> np.ndarray:  # fmt: skip
    """sum over output rows of the squared quantization error, per input column (float64 [K]),
    of a torch Linear's weight [N, K]."""
    total = np.zeros(weight_nk.shape[1], dtype=np.float64)
    for _, _, error in _error_bands(weight_nk, bits, block_size, symmetric, chunk_bytes):
        total += error.sum(0)
    return total


def fisher_error(
    weight_nk: np.ndarray, grad_nk: Any, bits: int, block_size: int, symmetric: bool,
    chunk_bytes: int = ERROR_CHUNK_BYTES,
) -> float:  # fmt: skip
    """sum(grad^2 * dW^2) over a Linear's weight [N, K], dW its quantization error and `grad` a
    gradient of the same shape (torch or numpy), band by band."""
    total = 0.0
    for rows, _, error in _error_bands(weight_nk, bits, block_size, symmetric, chunk_bytes):
        band = grad_nk[rows]
        band = np.asarray(band.numpy() if hasattr(band, "numpy") else band, dtype=np.float64)
        total += float((np.square(band) * error).sum())
    return total


def _unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    """uint8 bytes -> one value per element along the last axis (low nibble first)."""
    if bits == 8:
        return packed.reshape(packed.shape[0], -1)
    flat = packed.reshape(packed.shape[0], -1)
    out = np.empty((flat.shape[0], flat.shape[1] * 2), dtype=np.uint8)
    out[:, 0::2] = flat & 0x0F
    out[:, 1::2] = flat >> 4
    return out


@dataclass
class Group:
    """One quantization group: a graph node and the torch Linear modules it computes."""

    role: NodeRole
    modules: list[Any]
    params: int
    sensitivity: float | None = None

    @property
    def extra_bytes(self) -> float:
        """Bytes that 8 bits cost over 4 (block 32, fp32 scales: 9 against 5 bits per weight)."""
        return self.params * 4 / 8


def torch_groups(model: Any, node_names: Sequence[str]) -> list[Group]:
    """Pair each decoder projection node of the graph with the reference's Linear modules."""
    import torch

    keys: dict[str, NodeRole] = {}
    for name in node_names:
        role = node_role(name)
        if role is not None:
            keys[role.key] = role
    modules: dict[str, list[Any]] = {k: [] for k in keys}
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        role = node_role(name)
        if role is None:
            continue
        key = role.key
        if key not in keys and role.role in FUSED:
            key = key.rsplit(".", 1)[0] + "." + FUSED[role.role]
        if key in modules:
            modules[key].append(module)
    return [
        Group(keys[k], mods, sum(m.weight.numel() for m in mods))
        for k, mods in modules.items()
        if mods
    ]


@dataclass
class Calibration:
    """The reference's log-probabilities on calibration windows, and fake-quantized forwards."""

    model: Any
    windows: list[np.ndarray]
    block_size: int = 32
    symmetric: bool = True
    # (module id, weight [K, N], bits) -> the weight the artifact will compute with: the
    # writer's own rounding (target.WriterRounding); None: onnxruntime's RTN (dequantize)
    rounding: Callable[[int, np.ndarray, int], np.ndarray] | None = None
    reference: list[np.ndarray] = field(default_factory=list)
    _saved: dict[int, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.reference = [log_softmax(self._logits(w)) for w in self.windows]

    def _logits(self, ids: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model(input_ids=torch.from_numpy(ids[None, :]), use_cache=False)
        return np.asarray(out.logits[0].float().numpy())

    def score(self, plan: dict[int, int]) -> tuple[float, float]:
        """(mean KL, PPL ratio) of the model with module id -> bits applied, over the windows."""
        self._apply(plan)
        try:
            kl = nll = nll_ref = 0.0
            count = 0
            for ids, ref in zip(self.windows, self.reference, strict=True):
                cand = log_softmax(self._logits(ids))
                kl += float((np.exp(ref[:-1]) * (ref[:-1] - cand[:-1])).sum())
                rows, target = np.arange(len(ids) - 1), ids[1:]
                nll -= float(cand[rows, target].sum())
                nll_ref -= float(ref[rows, target].sum())
                count += len(ids) - 1
            return kl / count, float(np.exp(min((nll - nll_ref) / count, 700.0)))
        finally:
            self._restore()

    def _apply(self, plan: dict[int, int]) -> None:
        import torch

        by_id = {id(m): m for m in self.model.modules()}
        with torch.no_grad():
            for module_id, bits in plan.items():
                module = by_id[module_id]
                self._saved[module_id] = module.weight.detach().clone()
                weight_kn = module.weight.detach().float().numpy().T
                if self.rounding is not None:
                    values = self.rounding(module_id, weight_kn, bits)
                else:
                    values = dequantize(weight_kn, bits, self.block_size, self.symmetric)
                module.weight.copy_(torch.from_numpy(values.T.copy()))

    def _restore(self) -> None:
        import torch

        by_id = {id(m): m for m in self.model.modules()}
        with torch.no_grad():
            for module_id, weight in self._saved.items():
                by_id[module_id].weight.copy_(weight)
        self._saved.clear()


class FisherSums:
    """Per group, the running sum over calibration windows of sum(g^2 * dW^2): g a window's
    gradient of the sampled tokens' log-likelihood, dW the weight's 4-bit error. `hook` makes
    the gradient hook of one weight; a weight whose gradient arrives in `parts` (a tied
    embedding and head loaded as two tensors) is summed first and squared once, as one tensor's."""

    def __init__(self, groups: list[Group], block_size: int, symmetric: bool) -> None:
        self.block_size, self.symmetric = block_size, symmetric
        self.totals = {id(g): 0.0 for g in groups}
        self._parts: dict[str, tuple[int, Any]] = {}
        self._rows: np.ndarray | None = None

    def window(self, ids: np.ndarray) -> None:
        """The window about to run: its distinct token ids are the only rows an embedding's
        gradient has (fisher_passes calls it)."""
        self._rows = np.unique(np.asarray(ids, dtype=np.int64))

    def hook(self, group: Group, key: str, weight: Any, parts: int = 1) -> Callable[[Any], None]:
        """The torch tensor hook that adds `weight`'s share to `group`'s sum (key: its tensor).

        A tied head's gradient comes in two parts, the head's (dense) and the embedding's (zero
        outside the window's token rows), summed before squaring. Outside those rows the sum is
        the head's part alone, so each part's share there is added as it arrives and only the
        window's rows of the first part are kept for the second: |window| x hidden floats, not
        the vocabulary-sized gradient (0.93 GB on the Qwen2.5-1.5B shape, held through the
        whole backward pass, and a second one for the sum)."""

        def on_grad(grad: Any) -> None:
            import torch

            g = grad.detach()
            values = weight.detach().numpy()
            args = (4, self.block_size, self.symmetric)
            if parts == 1 or self._rows is None:
                self.totals[id(group)] += fisher_error(values, g, *args)
                return
            rows = self._rows
            index = torch.from_numpy(rows)
            picked = g[index]
            norms = torch.linalg.vector_norm(g, ord=1, dim=1)  # no vocabulary-sized |g| copy
            norms[index] = 0
            if bool(norms.any()):  # the head's part; the embedding's has nothing outside
                outside = fisher_error(values, g, *args) - fisher_error(values[rows], picked, *args)
                self.totals[id(group)] += outside
            self._add_rows(group, key, picked, values[rows], parts)

        return on_grad

    def rows_part(
        self, group: Group, key: str, ids: np.ndarray, grad_out: Any, values: np.ndarray,
        parts: int, padding_idx: int | None = None,
    ) -> None:  # fmt: skip
        """Add an embedding's part of a tied weight's gradient from the gradient of its output
        (`grad_out` [len(ids), hidden]): row v is the sum over the positions of token v, as torch's
        embedding backward computes it (nothing for `padding_idx`), with no vocabulary-sized
        gradient and no grad-requiring weight (which would stay alive through the whole backward
        pass). `values`: the weight's rows of the window's distinct tokens (FisherSums.window)."""
        import torch

        rows, inverse = np.unique(np.asarray(ids, dtype=np.int64), return_inverse=True)
        if self._rows is None or not np.array_equal(rows, self._rows):
            raise ValueError("rows_part: ids are not the window's")
        g = grad_out.detach().reshape(len(inverse), -1).float()
        picked = torch.zeros(len(rows), g.shape[1], dtype=g.dtype)
        picked.index_add_(0, torch.from_numpy(inverse.reshape(-1)), g)
        if padding_idx is not None:
            picked[torch.from_numpy(rows == padding_idx)] = 0
        self._add_rows(group, key, picked, values, parts)

    def _add_rows(
        self, group: Group, key: str, picked: Any, values: np.ndarray, parts: int
    ) -> None:
        """One part's rows of the window's tokens; the last part squares their sum."""
        seen, kept = self._parts.pop(key, (0, None))
        kept = picked.clone() if kept is None else kept + picked
        if seen + 1 < parts:
            self._parts[key] = (seen + 1, kept)
            return
        args = (4, self.block_size, self.symmetric)
        self.totals[id(group)] += fisher_error(values, kept, *args)

    def finish(self, groups: list[Group], tokens: int) -> None:
        """Set each group's sensitivity: 0.5 x its sum per calibration token."""
        for group in groups:
            group.sensitivity = 0.5 * self.totals[id(group)] / max(tokens, 1)


def fisher_passes(
    model: Any, windows: list[np.ndarray], on_window: Callable[[np.ndarray], None] | None = None
) -> int:
    """One backward pass per window of the log-likelihood of tokens sampled from the model's own
    next-token distribution (seeded); the weights' gradient hooks do the rest (`on_window(ids)`
    is told each window first). Returns tokens."""
    import torch

    generator = torch.Generator().manual_seed(0)
    tokens = 0
    for ids in windows:
        if on_window is not None:
            on_window(ids)
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=torch.from_numpy(ids[None, :]), use_cache=False).logits[0]
        with torch.no_grad():
            probs = torch.softmax(logits.detach().float(), -1)
            sampled = torch.multinomial(probs, 1, generator=generator)
        torch.log_softmax(logits.float(), -1).gather(1, sampled).sum().backward()
        tokens += len(ids)
    model.zero_grad(set_to_none=True)
    return tokens


def fisher_sensitivity(
    model: Any, windows: list[np.ndarray], groups: list[Group], block_size: int, symmetric: bool
) -> None:
    """Set each group's sensitivity to a second-order estimate of the KL its 4-bit error costs:
    0.5 * sum(F * dW^2), F the diagonal Fisher information of the reference's own next-token
    distribution (per-window gradients, squared: fisher_passes), dW the exact error of
    onnxruntime's 4-bit quantizer. One backward pass per window instead of one forward per
    group; the search then measures real KLs. The whole `model` is in memory (for the same
    estimate layer by layer: edgerun.exporters.onnx.fisher_stream)."""
    sums = FisherSums(groups, block_size, symmetric)
    handles = [
        m.weight.register_hook(sums.hook(g, f"{id(m.weight)}", m.weight))
        for g in groups
        for m in g.modules
    ]
    try:
        tokens = fisher_passes(model, windows)
    finally:
        for handle in handles:
            handle.remove()
    sums.finish(groups, tokens)


def rank(groups: list[Group]) -> list[Group]:
    """Groups by sensitivity per extra byte of 8 bits, most worth raising first."""
    return sorted(groups, key=lambda g: -(g.sensitivity or 0.0) / g.extra_bytes)


def plan_for(ranked: list[Group], k: int) -> dict[str, int]:
    """Node name -> bits: the first k ranked groups in 8 bits, the rest in 4."""
    return {g.role.name: 8 if i < k else 4 for i, g in enumerate(ranked)}


def module_plan(ranked: list[Group], k: int) -> dict[int, int]:
    """The same plan over the torch modules (for a calibration KL)."""
    return {id(m): 8 if i < k else 4 for i, g in enumerate(ranked) for m in g.modules}


@dataclass
class Probe:
    """One step of the search: k groups in 8 bits and the calibration KL it gave."""

    k: int
    kl: float


def search_k(
    kl_of: Callable[[int], float], n: int, target: float
) -> tuple[int | None, list[Probe]]:
    """The smallest k in 0..n with kl_of(k) <= target, by bisection (kl_of is taken as
    non-increasing in k). Returns (k or None when even k = n misses, the probes made)."""
    probes: list[Probe] = []

    def probe(k: int) -> float:
        value = kl_of(k)
        probes.append(Probe(k, value))
        return value

    if probe(n) > target:
        return None, probes
    lo, hi = 0, n  # kl(hi) <= target
    if probe(0) <= target:
        return 0, probes
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if probe(mid) <= target:
            hi = mid
        else:
            lo = mid
    return hi, probes
