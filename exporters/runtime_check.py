"""Validation through the runtime path: an exported artifact is checked as users run it.

The written artifact is loaded with `edgerun.load` (the backend, execution providers and threads a
user gets), fed a short prefix of the evaluation text and decoded greedily one token at a time
with its KV cache. Each step's logits are compared with the same artifact's logits from one
forward pass without a cache over the same tokens: the pass the validation metrics scored against
the reference. A graph without a cache, a cache laid out wrongly (heads, positions, a sliding
window) or an artifact the runtime cannot load fails the export. The decode-speed probe
(edgerun.exporters.probe) runs on the same loaded model, and its failure fails the export too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgerun.core.errors import EdgerunError
from edgerun.exporters.validate import LogitsFn

if TYPE_CHECKING:  # pragma: no cover
    from edgerun.exporters.formats import ExportContext
    from edgerun.exporters.validate import Reference
    from edgerun.runtime.fidelity import FidelityReference

PREFIX_TOKENS = 16
STEPS = 8
# Bit width of the artifact's precision -> the largest relative logit error allowed between the
# cached decode and the no-cache pass (the RMS of their difference over the RMS of the centred
# no-cache logits, worst step), widest first. Both passes run the same weights in the same
# runtime; what is left is the cache's own precision (llama.cpp keeps it in f16) and, for
# quantized weights, kernels that differ by batch size (one-token steps quantize activations to
# int8 where the batched pass does not). Measured on SmolLM2-135M: onnx-fp32 (genai) 4e-6,
# onnx-fp16 0.0018, gguf-f16 0.0066, onnx-int8 (genai) 0.062, gguf-q4_0 0.095, onnx-int4
# (genai, q4-head8) 0.113; the tiny family checkpoints at most 4e-5. Broken caches measured 0.36
# (longrope factors picked by context size) and more.
TOLERANCES: tuple[tuple[int, float], ...] = ((16, 0.03), (8, 0.15), (0, 0.25))


@dataclass
class RuntimeChecks:
    """What loading the artifact through the runtime found: the validation's `kv_decode` block
    (None: not asked), the manifest's `probe` block (None: not asked) and why it fails."""

    kv_decode: dict[str, Any] | None = None
    probe: dict[str, Any] | None = None
    fidelity: dict[str, Any] | None = (
        None  # the build machine's score (edgerun.exporters.fidelity_check)
    )
    failures: list[str] = field(default_factory=list)


def tolerance(precision: str) -> float:
    """The KV-decode tolerance for an artifact of `precision` ("fp32", "fp16", "q4_k_m", ...)."""
    match = re.search(r"\d+", precision)
    bits = int(match.group()) if match else 0
    return next(tol for min_bits, tol in TOLERANCES if bits >= min_bits)


def check_artifact(
    artifact: Path,
    threads: int | None,
    *,
    token_ids: Sequence[int] | None,
    nocache: Callable[[], LogitsFn] | None,
    precision: str,
    probe_prompt: str | None,
    fidelity: FidelityReference | None = None,
) -> RuntimeChecks:
    """Load `artifact` with edgerun.load once; decode `token_ids`' prefix with the KV cache and
    compare with `nocache()` (a LogitsFn made after the runtime's model is closed) when both are
    given, score it against the shipped `fidelity` reference when given, and time the probe on
    `probe_prompt` when it is given. Never raises EdgerunError:
    a failure is one line in `failures` (and `{"error": ...}` as the probe block)."""
    import edgerun

    checks = RuntimeChecks()
    trace = None
    try:
        # prompt cache off: the probe times the same prompt repeatedly
        with edgerun.load(str(artifact), threads=threads, prompt_cache_mb=0) as model:
            backend = model.info.backend
            if token_ids is not None and nocache is not None:
                trace = _decode(model, token_ids, checks)
            if fidelity is not None:
                checks.fidelity = _fidelity(model, fidelity, checks)
            if probe_prompt is not None:
                checks.probe = _probe(model, probe_prompt, checks)
    except EdgerunError as exc:
        checks.failures.append(f"the runtime cannot load it: {exc.message}")
        if probe_prompt is not None:
            checks.probe = {"error": exc.message}
        return checks
    if trace is not None and nocache is not None:
        checks.kv_decode = _compare(trace, nocache, tolerance(precision), backend)
        if not checks.kv_decode["passed"]:
            checks.failures.append(_failure(checks.kv_decode))
    return checks


def runtime_checks(
    artifact: Path,
    family: Any,
    run_fields: dict[str, Any],
    ctx: ExportContext,
    reference: Reference | None,
    manifest: dict[str, Any],
) -> list[str]:
    """Load the written artifact through edgerun.load as users run it: decode with its KV cache
    against the no-cache pass (when validating) and time the probe (when asked). Records the
    validation's `kv_decode` block and the manifest's `probe`; a failure marks the validation
    failed. Returns the failures, one line each."""
    from edgerun.exporters.reference import read_eval_text

    probe = ctx.options.probe
    if reference is None and not probe:
        return []
    stage = (
        "decode with the KV cache through edgerun.load, score the shipped fidelity reference"
        if reference is not None
        else ""
    )
    if probe:
        stage = f"{stage}{', then ' if stage else ''}probe decode speed (32 greedy tokens)"
    with ctx.stage(stage):
        checks = check_artifact(
            artifact,
            ctx.options.threads,
            token_ids=None if reference is None else [int(t) for t in reference.windows[0]],
            nocache=lambda: family.logits_fn(artifact, run_fields),
            precision=str(run_fields["precision"]),
            probe_prompt=read_eval_text(None) if probe else None,
            fidelity=_shipped(artifact, manifest.get("fidelity")),
        )
    if checks.fidelity is not None:
        from edgerun.exporters.fidelity_check import record_export_score

        record_export_score(manifest["fidelity"], checks.fidelity)
    validation = manifest["validation"]
    if validation is not None:
        validation["kv_decode"] = checks.kv_decode
        if checks.failures:
            validation["passed"] = False
            validation["reasons"] = [*validation["reasons"], *checks.failures]
    if checks.probe is not None:
        manifest["probe"] = checks.probe
    return checks.failures


def _decode(
    model: Any, token_ids: Sequence[int], checks: RuntimeChecks
) -> tuple[list[int], list[int], np.ndarray] | None:
    prefix = [int(t) for t in token_ids[:PREFIX_TOKENS]]
    try:
        tokens, logits = model.decode_logits(prefix, STEPS)
    except EdgerunError as exc:
        checks.failures.append(f"decoding with the KV cache failed: {exc.message}")
        return None
    return prefix, tokens, logits


def _shipped(artifact: Path, block: dict[str, Any] | None) -> FidelityReference | None:
    """The fidelity reference the export just wrote into `artifact` (None: not validated)."""
    from edgerun.runtime.fidelity import read_reference

    return None if block is None else read_reference(artifact / block["reference"])


def _fidelity(model: Any, ref: FidelityReference, checks: RuntimeChecks) -> dict[str, Any] | None:
    from edgerun.exporters.fidelity_check import score_model

    try:
        return score_model(model, ref)
    except EdgerunError as exc:
        checks.failures.append(f"scoring the fidelity reference failed: {exc.message}")
        return None


def _probe(model: Any, prompt: str, checks: RuntimeChecks) -> dict[str, Any]:
    from edgerun.exporters.probe import probe_model

    try:
        return probe_model(model, prompt)
    except EdgerunError as exc:
        checks.failures.append(f"the decode probe failed: {exc.message}")
        return {"error": exc.message}


def _compare(
    trace: tuple[list[int], list[int], np.ndarray],
    nocache: Callable[[], LogitsFn],
    tol: float,
    backend: str,
) -> dict[str, Any]:
    """The `kv_decode` block: cached steps against the no-cache pass over the same tokens."""
    prefix, tokens, cached = trace
    window = np.asarray(prefix + tokens[:-1], dtype=np.int64)
    full = nocache()(window)[len(prefix) - 1 :]
    if full.shape != cached.shape:
        errors = [float("inf")]
    else:
        centred = full - full.mean(axis=-1, keepdims=True)
        rms_diff = np.sqrt(np.mean((cached - full) ** 2, axis=-1))
        errors = list(rms_diff / np.maximum(np.sqrt(np.mean(centred**2, axis=-1)), 1e-12))
    worst = float(np.max(errors))  # NaN propagates, and fails
    agree = [int(np.argmax(row)) == t for row, t in zip(full, tokens, strict=False)]
    return {
        "what": "greedy decode with the KV cache through edgerun.load, against one forward pass"
        " of the same artifact without a cache",
        "backend": backend,
        "prefix_tokens": len(prefix),
        "steps": len(tokens),
        "max_rel_error": worst if np.isfinite(worst) else None,
        "tolerance": tol,
        "greedy_agreement": round(sum(agree) / max(len(tokens), 1), 4),
        "passed": bool(worst <= tol),  # NaN and a shape mismatch fail
    }


def _failure(block: dict[str, Any]) -> str:
    error = block["max_rel_error"]
    shown = (
        "non-finite or misshapen logits" if error is None else f"relative logit error {error:.3g}"
    )
    return (
        f"decoding with the KV cache differs from the no-cache pass ({shown} >"
        f" {block['tolerance']} over {block['steps']} steps)"
    )
