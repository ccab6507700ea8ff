"""Validation shared by every exporter: score an artifact's next-token distributions against the
reference model on an evaluation text.

Metrics, over non-overlapping windows of the tokenized text: reference perplexity, artifact
perplexity, their ratio, mean KL(reference || artifact) of next-token distributions, and top-1
agreement, over every position and over the confident ones (the reference's top-2 log-prob
margin at least CONFIDENT_MARGIN: where the reference is nearly flat, which token wins is noise).
KL and PPL ratio are the primary gate; top-1 is gated over every position as calibrated on
SmolLM2, except for a flat reference (fewer than FLAT_SHARE of its positions confident, e.g. a
random-weight checkpoint), whose top-1 is gated over its confident positions only. Each backend supplies a `LogitsFn`: token ids of one window -> logits [len, vocab],
computed by really running the artifact (onnxruntime, llama.cpp), never by fake quantization.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgerun.core.errors import EdgerunError

LogitsFn = Callable[[np.ndarray], np.ndarray]
MIN_EVAL_TOKENS = 256
# A position is confident when the reference's top-1 log-prob leads its top-2 by this many nats
# (probability ratio e ~ 2.7).
CONFIDENT_MARGIN = 1.0
# Below this share of confident positions the reference is flat and top-1 is gated over the
# confident positions only (and not at all with fewer than MIN_CONFIDENT of them). SmolLM2-135M's
# reference is confident at 0.43 of the shipped eval text's positions (1,192 of 2,804), so its
# artifacts keep the calibrated gate over every position (onnx-int4 q4-mixed: top-1 0.669 over
# all, 0.868 over the confident ones).
FLAT_SHARE = 0.25
MIN_CONFIDENT = 50


@dataclass(frozen=True)
class Thresholds:
    """The pass / fail gate, calibrated on SmolLM2-135M-Instruct (the fp32 checkpoint dequantized
    from the Q4_1 GGUF) over the shipped eval text (2,815 tokens), artifacts run in onnxruntime
    1.32 on an AVX-512 VNNI CPU:

        format (options)                          PPL ratio   mean KL   top-1
        onnx-fp32                                 1.000       0.0000    1.000
        onnx-fp16                                 0.9997      0.0001    0.995
        onnx-int8 (8-bit MatMulNBits, block 32)   1.006       0.0042    0.960
        onnx-int4 (HQQ, block 32)                 1.105       0.0915    0.771
        onnx-int4 (RTN, block 32, asym)           1.392       0.373     0.609
        onnx-int8 --int8-mode dynamic             1.708       0.556     0.576

    Then (measured on an AVX2 CPU, onnxruntime-genai's fp32 graph quantized):
        onnx-int4 (RTN, block 32, sym, all 4-bit) 1.316       0.377     0.630
        onnx-int8 (RTN, block 32, sym: default)   1.005       0.0043    0.953
    Now (AVX-512 CPU; the default int4 recipe q4-mixed, gate INT4_GATE):
        onnx-int4 (q4-mixed, RTN asym: default)   1.186       0.174     0.725
        onnx-int4 (q4-mixed, RTN sym)             1.173       0.182     0.721

    The gate passes every weight-only format and refuses dynamic int8 on both PPL ratio and KL.
    (On the AVX2 reference machine dynamic int8 was measured at PPL ratio ~1e6, KL ~14: garbage;
    u8s8 MatMulInteger saturating without VNNI is the likely cause, not verified here.) Tiny
    random fixtures have other statistics: their tests set their own thresholds."""

    max_ppl_ratio: float = 1.50
    max_mean_kl: float = 0.50
    min_top1_agreement: float = 0.50

    @classmethod
    def for_precision(cls, precision: str) -> Thresholds:
        """The default gate for an artifact of `precision` ("fp16", "int8", "q4_k_m", ...).

        One gate for every precision would let a broken 8-bit artifact pass with an error that
        is normal for 4 bits; the gate tightens with the bit width (table: GATES_BY_BITS).
        edgerun's own mixed int4 ("int4") has a tighter gate than llama.cpp's fixed 4-bit
        types (INT4_GATE).
        """
        if precision == "int4":
            return INT4_GATE
        match = re.search(r"\d+", precision)
        bits = int(match.group()) if match else 0
        for min_bits, gate in GATES_BY_BITS:
            if bits >= min_bits:
                return gate
        return cls()

    def check(
        self,
        ppl_ratio: float,
        mean_kl: float,
        top1: float | None,
        top1_what: str = "top-1 agreement",
    ) -> list[str]:
        """Reasons the metrics fail this gate (empty when they pass); top1 None is not gated,
        `top1_what` names it in the reason."""
        reasons = []
        if not ppl_ratio <= self.max_ppl_ratio:  # `not <=` also catches NaN
            reasons.append(f"PPL ratio {ppl_ratio:.3g} > {self.max_ppl_ratio}")
        if not mean_kl <= self.max_mean_kl:
            reasons.append(f"mean KL {mean_kl:.3g} > {self.max_mean_kl}")
        if top1 is not None and not top1 >= self.min_top1_agreement:
            reasons.append(f"{top1_what} {top1:.3f} < {self.min_top1_agreement}")
        return reasons


# Lowest bit width of a class -> its gate, widest first. Calibrated on the SmolLM2-135M measurements
# (PPL ratio / mean KL / top-1), with margin: 16+ bits fp32, fp16, bf16, f16: <= 1.0000 / 0.0001 /
# >= 0.993; 8 bits int8 weight-only 1.006 / 0.0042 / 0.960, q8_0 1.005 / 0.0042 / 0.951 (dynamic int8,
# 1.71 / 0.56, is refused); 5-6 bits q6_k 1.009 / 0.010 / 0.937, q5_* <= 1.141 / 0.123 / >= 0.791;
# 4 bits and below: the class default (int4 RTN 1.316 / 0.377 / 0.630 symmetric, 1.392 / 0.373 /
# 0.609 asymmetric, q4_0 1.206 / 0.282 / 0.694,
# q3_k_s 1.358 / 0.418 / 0.636; iq3_m 2.09 / 0.73 is refused).
# ONNX int4, made by edgerun's recipes (exporters/onnx/recipes.py). The default (q4-mixed,
# asymmetric) measured PPL ratio / mean KL / top-1 1.186 / 0.174 / 0.725 on the demo checkpoint
# and 1.222 / 0.212 / 0.693 on the off-grid reference (symmetric: 1.173 / 0.182 / 0.721 and
# 1.233 / 0.229 / 0.701; benchmarks/README.md, "Fidelity"); this gate leaves >30% margin on KL
# and refuses the all-4-bit RTN artifacts the old gate let through (0.374-0.376 demo, 0.445-0.527
# off grid). llama.cpp's fixed 4-bit types keep the class default: its q4_0 measured 0.429 off
# grid.
INT4_GATE = Thresholds(max_ppl_ratio=1.35, max_mean_kl=0.30, min_top1_agreement=0.65)
GATES_BY_BITS: tuple[tuple[int, Thresholds], ...] = (
    (16, Thresholds(max_ppl_ratio=1.02, max_mean_kl=0.01, min_top1_agreement=0.95)),
    (8, Thresholds(max_ppl_ratio=1.05, max_mean_kl=0.05, min_top1_agreement=0.85)),
    (5, Thresholds(max_ppl_ratio=1.25, max_mean_kl=0.25, min_top1_agreement=0.70)),
)


@dataclass
class Validation:
    """The manifest's `validation` block."""

    ppl_ref: float
    ppl: float
    ppl_ratio: float
    mean_kl: float
    top1_agreement: float
    tokens: int
    eval_text_sha256: str
    thresholds: dict[str, float]
    passed: bool
    reasons: list[str] = field(default_factory=list)
    # top-1 agreement over the positions where the reference is confident (None: no such
    # position), how many there are, and which top-1 the gate checked ("all", "confident",
    # or "none" for a flat reference with fewer than MIN_CONFIDENT confident positions)
    top1_confident: float | None = None
    confident_tokens: int = 0
    top1_gated: str = "all"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax over the last axis, in float64."""
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def windows(token_ids: Sequence[int], window: int) -> list[np.ndarray]:
    """Split token ids into non-overlapping windows of `window` tokens (the tail if >= 2 tokens)."""
    ids = np.asarray(token_ids, dtype=np.int64)
    chunks = [ids[i : i + window] for i in range(0, len(ids), window)]
    return [c for c in chunks if len(c) >= 2]


class Reference:
    """Reference log-probabilities on the evaluation windows, computed once, scored many times.

    Built from a logits function (kept in RAM, float64), or with from_logprobs from log-probs
    computed elsewhere (e.g. layer by layer into a LogprobFile on disk)."""

    def __init__(self, logits_fn: LogitsFn, token_ids: Sequence[int], text: str, window: int = 256):
        check_eval_tokens(len(token_ids))
        self.windows = windows(token_ids, window)
        self.logprobs: Sequence[np.ndarray] | LogprobFile = [
            log_softmax(logits_fn(w))[:-1] for w in self.windows
        ]
        self.text_sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()

    @classmethod
    def from_logprobs(
        cls, chunks: list[np.ndarray], logprobs: Sequence[np.ndarray] | LogprobFile, text: str
    ) -> Reference:
        """A reference over `chunks` (token windows) whose log-probs [len - 1, vocab] per window
        are `logprobs` (a list, or a LogprobFile read window by window)."""
        ref = cls.__new__(cls)
        ref.windows, ref.logprobs = chunks, logprobs
        ref.text_sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()
        return ref

    @property
    def tokens(self) -> int:
        """Number of scored next-token predictions."""
        return sum(len(w) - 1 for w in self.windows)

    def score(
        self,
        logits_fn: LogitsFn,
        thresholds: Thresholds | None = None,
        detail: Callable[[str], None] | None = None,
    ) -> Validation:
        """Run `logits_fn` over the same windows and compare with the reference; `detail(str)`
        is told each window as it starts ("window 2/5")."""
        thresholds = thresholds or Thresholds()
        nll_ref = nll = kl = agree = agree_confident = confident = 0.0
        for i, ids in enumerate(self.windows):
            if detail is not None:
                detail(f"window {i + 1}/{len(self.windows)}")
            ref = np.asarray(self.logprobs[i], dtype=np.float64)
            cand_logits = logits_fn(ids)
            if cand_logits.shape[-1] != ref.shape[-1]:
                raise EdgerunError(
                    f"artifact vocabulary {cand_logits.shape[-1]} != reference {ref.shape[-1]}",
                    "the artifact was not built from this model",
                )
            cand = log_softmax(cand_logits)[:-1]
            target = ids[1:]
            rows = np.arange(len(target))
            nll_ref -= ref[rows, target].sum()
            nll -= cand[rows, target].sum()
            kl += (np.exp(ref) * (ref - cand)).sum()
            same = ref.argmax(-1) == cand.argmax(-1)
            sure = top2_margin(ref) >= CONFIDENT_MARGIN
            agree += same.sum()
            agree_confident += (same & sure).sum()
            confident += sure.sum()
        n = self.tokens
        ppl_ref, ppl = float(np.exp(nll_ref / n)), float(np.exp(min(nll / n, 700.0)))
        ratio, mean_kl, top1 = ppl / ppl_ref, float(kl / n), float(agree / n)
        top1_sure = float(agree_confident / confident) if confident else None
        gated, reasons = gate_metrics(
            thresholds, ratio, mean_kl, top1, top1_sure, int(confident), n
        )
        return Validation(
            ppl_ref=ppl_ref,
            ppl=ppl,
            ppl_ratio=ratio,
            mean_kl=mean_kl,
            top1_agreement=top1,
            tokens=n,
            eval_text_sha256=self.text_sha256,
            thresholds=asdict(thresholds),
            passed=not reasons,
            reasons=reasons,
            top1_confident=top1_sure,
            confident_tokens=int(confident),
            top1_gated=gated,
        )


def check_eval_tokens(count: int) -> None:
    """EdgerunError when an evaluation text of `count` tokens is too short to validate on."""
    if count < MIN_EVAL_TOKENS:
        raise EdgerunError(
            f"the evaluation text has {count} tokens; validation needs at least {MIN_EVAL_TOKENS}",
            "pass a longer --eval-text file",
        )


def top2_margin(logprobs: np.ndarray) -> np.ndarray:
    """Per row, the top-1 log-prob minus the top-2 one (>= 0)."""
    top2 = np.partition(logprobs, -2, axis=-1)[..., -2:]
    return np.asarray(top2[..., 1] - top2[..., 0])


def gate_metrics(
    thresholds: Thresholds,
    ppl_ratio: float,
    mean_kl: float,
    top1: float,
    top1_confident: float | None,
    confident: int,
    tokens: int,
) -> tuple[str, list[str]]:
    """(which top-1 was gated, the reasons the metrics fail `thresholds`): top-1 over every
    position, or over the confident ones for a flat reference (see the module docstring)."""
    gated, top1_value = gated_top1(top1, top1_confident, confident, tokens)
    what = "top-1 agreement" + (" (confident positions)" if gated == "confident" else "")
    return gated, thresholds.check(ppl_ratio, mean_kl, top1_value, what)


def gated_top1(
    top1: float, top1_confident: float | None, confident: int, tokens: int
) -> tuple[str, float | None]:
    """Which top-1 the gate checks (see the module docstring) and its value (None: none)."""
    if confident >= FLAT_SHARE * tokens:
        return "all", top1
    if confident >= MIN_CONFIDENT:
        return "confident", top1_confident
    return "none", None


class LogprobFile:
    """Log-probs [len - 1, vocab] of each window, float32 in a memory-mapped file: written once
    window by window, read back one window at a time (the reference of a large vocabulary does
    not fit in RAM as float64: 2,815 tokens x 128k x 8 B = 2.9 GB). The file's pages are given
    back to the page cache after each window is written or read: mapped, they counted in the
    process's memory through every later stage (0.98 GB of the Qwen2.5-1.5B shape's 1,691
    tokens x 152k vocabulary during its calibration, which never reads them)."""

    def __init__(self, path: Path, rows: Sequence[int], vocab: int) -> None:
        self.offsets = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
        shape = (int(self.offsets[-1]), vocab)
        self.data = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        window = np.array(self.data[self.offsets[i] : self.offsets[i + 1]])  # a copy: then release
        self.release()
        return window

    def __setitem__(self, i: int, values: np.ndarray) -> None:
        self.data[self.offsets[i] : self.offsets[i + 1]] = values
        self.release()

    def release(self) -> None:
        """Unmap the pages this process touched (a shared file mapping: they stay in the page
        cache, written ones included, and are read again from there when used again)."""
        import mmap

        mapped = getattr(self.data, "_mmap", None)
        if mapped is not None and hasattr(mmap, "MADV_DONTNEED"):
            mapped.madvise(mmap.MADV_DONTNEED)
