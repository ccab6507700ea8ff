"""The compact fidelity reference every validated artifact ships with (`fidelity-reference.npz`).

The export's validation scores the artifact on the build machine, but quantized kernels differ
per ISA (onnxruntime's int4 at accuracy level 4 runs other kernels with and without dot
products), so the device's numbers need their own check: `edgerun verify --fidelity`
(edgerun.exporters.fidelity_check) scores the artifact where it runs against this file.

What it holds: SEGMENTS slices spread over the evaluation windows, each CONTEXT tokens of
context followed by SCORED scored tokens; for every scored position the reference model's
TOP_K largest log-probs (sorted, with their token ids), the log of the probability mass outside
them, and the log-prob of the token that follows in the text. About 70 KB for a 128-token
slice at k = 64. The file comes from elsewhere on the device, so read_reference bounds it
(size, member names, shapes, dtypes, value ranges) before a number of it is used.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgerun.core.errors import EdgerunError

REFERENCE_FILE = "fidelity-reference.npz"
SEGMENTS = 4
CONTEXT = 32
SCORED = 32
TOP_K = 64
# Refused unread above this (a default reference is ~70 KB; 8 MiB leaves room for k = 1024).
MAX_REFERENCE_BYTES = 8 << 20
# The log-mass outside the top-k when there is none (k >= vocabulary): exp() of it is 0.
TAIL_FLOOR = -1e4
FIELDS = ("tokens", "top_ids", "top_logprobs", "tail_logprob", "target_logprob", "header")
HINT = "re-export the artifact, or re-copy it from where it was made"


@dataclass(frozen=True)
class FidelityReference:
    """The arrays of one reference: `tokens` [segments, context + scored] (int32); per scored
    position `top_ids` / `top_logprobs` [segments, scored, k] (int32 / float32, log-probs
    descending), `tail_logprob` and `target_logprob` [segments, scored] (float32); `vocab` the
    reference model's vocabulary size and `context` the tokens before the first scored one."""

    tokens: np.ndarray
    top_ids: np.ndarray
    top_logprobs: np.ndarray
    tail_logprob: np.ndarray
    target_logprob: np.ndarray
    vocab: int
    context: int

    @property
    def scored_tokens(self) -> int:
        """Next-token predictions scored over all segments."""
        return int(self.target_logprob.size)

    def describe(self) -> dict[str, int]:
        """The sizes the manifest's `fidelity` block records."""
        segments, scored, k = self.top_ids.shape
        return {
            "segments": segments,
            "context_tokens": self.context,
            "scored_tokens": segments * scored,
            "top_k": k,
        }


def tail_logprob(logprobs: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Per row of `logprobs` [n, vocab], the log of the probability outside the columns `ids`
    [n, k], floored at TAIL_FLOOR (float64)."""
    rest = np.array(logprobs, dtype=np.float64)
    np.put_along_axis(rest, ids, -np.inf, axis=-1)
    peak = rest.max(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        tail = peak[..., 0] + np.log(np.exp(rest - np.where(np.isfinite(peak), peak, 0)).sum(-1))
    return np.asarray(np.where(np.isfinite(tail), np.maximum(tail, TAIL_FLOOR), TAIL_FLOOR))


def build_reference(
    windows: list[np.ndarray], logprobs: Any, top_k: int = TOP_K
) -> FidelityReference:
    """The reference over evaluation `windows` (token ids) whose full log-probs [len - 1, vocab]
    are `logprobs[i]` (edgerun.exporters.validate.Reference's fields): SEGMENTS windows spread
    evenly, each cut to CONTEXT + SCORED tokens (less when the windows are shorter)."""
    length = min(CONTEXT + SCORED, min(len(w) for w in windows))
    context = max(1, length * CONTEXT // (CONTEXT + SCORED))
    picks = np.unique(np.linspace(0, len(windows) - 1, min(SEGMENTS, len(windows))).astype(int))
    tokens, top_ids, top_lp, tails, targets = [], [], [], [], []
    for i in picks:
        ids = np.asarray(windows[i][:length], dtype=np.int64)
        rows = np.asarray(logprobs[i][context - 1 : length - 1], dtype=np.float64)
        k = min(top_k, rows.shape[-1])
        top = np.argsort(-rows, axis=-1, kind="stable")[:, :k]
        tokens.append(ids)
        top_ids.append(top)
        top_lp.append(np.take_along_axis(rows, top, axis=-1))
        tails.append(tail_logprob(rows, top))
        targets.append(rows[np.arange(len(rows)), ids[context:]])
    return FidelityReference(
        tokens=np.stack(tokens).astype(np.int32),
        top_ids=np.stack(top_ids).astype(np.int32),
        top_logprobs=np.stack(top_lp).astype(np.float32),
        tail_logprob=np.stack(tails).astype(np.float32),
        target_logprob=np.stack(targets).astype(np.float32),
        vocab=int(np.asarray(logprobs[0]).shape[-1]),
        context=context,
    )


def write_reference(path: Path, ref: FidelityReference) -> None:
    """Write `ref` as an uncompressed .npz (plain arrays, no pickled objects)."""
    header = np.array([ref.vocab, ref.context], dtype=np.int64)
    arrays = {name: getattr(ref, name) for name in FIELDS if name != "header"}
    with open(path, "wb") as handle:
        np.savez(handle, header=header, **arrays)


def read_reference(path: Path) -> FidelityReference:
    """Read and check a reference file from an artifact; one-line EdgerunError when it is
    missing, larger than MAX_REFERENCE_BYTES, not the .npz edgerun writes, or holds arrays of
    the wrong names, types, shapes or values."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_REFERENCE_BYTES + 1)  # bounded, whatever stat() said
        if len(data) > MAX_REFERENCE_BYTES:
            raise EdgerunError(
                f"{path} is over {MAX_REFERENCE_BYTES} bytes, too large for a fidelity reference",
                HINT,
            )
    except FileNotFoundError as exc:
        raise EdgerunError(f"{path} does not exist", HINT) from exc
    except OSError as exc:
        raise EdgerunError(f"cannot read {path}: {exc.strerror or exc}", HINT) from exc
    arrays = _load_arrays(path, data)
    header = arrays.pop("header")
    if header.dtype != np.int64 or header.shape != (2,):
        raise _bad(path, "its header is not two integers")
    ref = FidelityReference(**arrays, vocab=int(header[0]), context=int(header[1]))
    problem = _problem(ref)
    if problem:
        raise _bad(path, problem)
    return ref


def _load_arrays(path: Path, data: bytes) -> dict[str, np.ndarray]:
    """The named arrays of an .npz in memory: exactly FIELDS, none unpacking beyond the bound."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
            names = sorted(m.filename for m in members)
            if names != sorted(f"{n}.npy" for n in FIELDS):
                raise _bad(path, f"it holds {', '.join(names)[:120] or 'nothing'}")
            if sum(m.file_size for m in members) > MAX_REFERENCE_BYTES:
                raise _bad(path, "its arrays unpack beyond the size bound")
            return {
                n: np.load(io.BytesIO(archive.read(f"{n}.npy")), allow_pickle=False) for n in FIELDS
            }
    except EdgerunError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise _bad(path, f"it is not a readable .npz ({type(exc).__name__})") from exc


def _problem(ref: FidelityReference) -> str | None:
    """Why `ref`'s arrays are inconsistent (None: they are not)."""
    dtypes = {
        "tokens": np.int32,
        "top_ids": np.int32,
        "top_logprobs": np.float32,
        "tail_logprob": np.float32,
        "target_logprob": np.float32,
    }
    for name, dtype in dtypes.items():
        if getattr(ref, name).dtype != dtype:
            return f"{name} is {getattr(ref, name).dtype}, not {np.dtype(dtype)}"
    if ref.top_ids.ndim != 3 or ref.tokens.ndim != 2:
        return "its arrays have the wrong number of dimensions"
    segments, scored, k = ref.top_ids.shape
    if min(segments, scored) < 1 or k < 2 or not 2 <= ref.vocab <= 1 << 24 or k > ref.vocab:
        return f"its sizes are out of range (segments {segments}, scored {scored}, k {k})"
    if ref.context < 1 or ref.tokens.shape != (segments, ref.context + scored):
        return f"tokens has shape {ref.tokens.shape}, not ({segments}, {ref.context + scored})"
    if ref.top_logprobs.shape != ref.top_ids.shape:
        return "top_logprobs and top_ids differ in shape"
    if ref.tail_logprob.shape != (segments, scored) or ref.target_logprob.shape != (
        segments,
        scored,
    ):
        return "tail_logprob or target_logprob has the wrong shape"
    for name in ("tokens", "top_ids"):
        values = getattr(ref, name)
        if values.min() < 0 or values.max() >= ref.vocab:
            return f"{name} holds ids outside the vocabulary of {ref.vocab}"
    lp = (ref.top_logprobs, ref.tail_logprob, ref.target_logprob)
    if not all(np.isfinite(a).all() and a.max() <= 1e-3 and a.min() >= TAIL_FLOOR for a in lp):
        return "its log-probs are not finite numbers <= 0"
    if (np.diff(ref.top_logprobs, axis=-1) > 1e-6).any():
        return "top_logprobs is not sorted"
    mass = np.exp(ref.top_logprobs.astype(np.float64)).sum(-1) + np.exp(ref.tail_logprob)
    if np.abs(mass - 1).max() > 1e-2:
        return "its probabilities do not sum to 1"
    return None


def _bad(path: Path, why: str) -> EdgerunError:
    return EdgerunError(f"{path} is not a valid fidelity reference: {why}", HINT)
