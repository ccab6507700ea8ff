"""Fidelity validated where the artifact runs: score an artifact against the compact reference it
ships with (edgerun.runtime.fidelity), through edgerun.load as users run it, on this machine.

Each segment's context is prefilled and its scored tokens are fed one at a time through the KV
cache (teacher forcing: the text's tokens, not the model's choices), so the kernels measured are
the decode kernels generation uses. Metrics over the scored positions: mean KL(reference ||
artifact) over the reference's top-k tokens plus one bin for the rest of the vocabulary (a lower
bound of the full KL, by the data-processing inequality, and equal to it where the rest is
negligible), top-1 agreement (over every position, or over the confident ones for a flat
reference, as edgerun.exporters.validate gates it), and the PPL ratio.

The export records the build machine's numbers (`fidelity.export`) and the bound: the
validation gate, widened to the export's own number on this slice where that is already worse
(a short slice is noisy; a device is flagged for being worse than both). `edgerun verify
--fidelity` records the device's numbers beside the export's and fails on a device outside it.
Measured on SmolLM2-135M's default onnx-int4 (q4-mixed, AVX-512 host): the whole-text
validation gave mean KL 0.174 / top-1 0.725 / PPL ratio 1.186, this slice 0.153 / 0.727 / 1.154,
inside the int4 gate (0.30 / 0.65 / 1.35), so the bound stayed the gate.
"""

from __future__ import annotations

import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from edgerun.core.errors import EdgerunError
from edgerun.core.manifest import REEXPORT, read_manifest
from edgerun.core.untrusted import contained, is_number
from edgerun.exporters.validate import (
    CONFIDENT_MARGIN,
    Thresholds,
    gate_metrics,
    gated_top1,
    log_softmax,
)
from edgerun.runtime.fidelity import (
    REFERENCE_FILE,
    FidelityReference,
    build_reference,
    read_reference,
    tail_logprob,
    write_reference,
)

WHAT = (
    "teacher-forced decode through edgerun.load against the reference's top-k log-probs"
    " (KL over the top-k plus one bin for the rest)"
)
BOUND_KEYS = ("max_ppl_ratio", "max_mean_kl", "min_top1_agreement")


def score_rows(ref: FidelityReference, rows: list[np.ndarray]) -> dict[str, Any]:
    """The metrics of candidate logits `rows` (one [scored, vocab] array per segment) against
    `ref`: mean_kl, top1_agreement, top1_confident, confident_tokens, ppl_ratio, tokens."""
    kl = nll = nll_ref = agree = agree_sure = sure_n = 0.0
    for s, logits in enumerate(rows):
        if logits.shape != ref.top_ids[s].shape[:1] + (ref.vocab,):
            raise EdgerunError(
                f"the artifact gave logits of shape {logits.shape}, the reference expects"
                f" {ref.top_ids[s].shape[0]} x {ref.vocab}",
                "the artifact and its fidelity reference do not belong together",
            )
        cand = log_softmax(logits)
        ids, top = ref.top_ids[s].astype(np.int64), ref.top_logprobs[s].astype(np.float64)
        tail = ref.tail_logprob[s].astype(np.float64)
        cand_top = np.take_along_axis(cand, ids, axis=-1)
        cand_tail = tail_logprob(cand, ids)
        kl += (np.exp(top) * (top - cand_top)).sum() + (np.exp(tail) * (tail - cand_tail)).sum()
        targets = ref.tokens[s, ref.context :].astype(np.int64)
        nll -= cand[np.arange(len(targets)), targets].sum()
        nll_ref -= ref.target_logprob[s].astype(np.float64).sum()
        same = cand.argmax(-1) == ids[:, 0]
        sure = top[:, 0] - top[:, 1] >= CONFIDENT_MARGIN
        agree, agree_sure, sure_n = (
            agree + same.sum(),
            agree_sure + (same & sure).sum(),
            sure_n + sure.sum(),
        )
    n = ref.scored_tokens
    return {
        "mean_kl": float(kl / n),
        "top1_agreement": float(agree / n),
        "top1_confident": float(agree_sure / sure_n) if sure_n else None,
        "confident_tokens": int(sure_n),
        "ppl_ratio": float(np.exp(min((nll - nll_ref) / n, 700.0))),
        "tokens": n,
    }


def score_model(model: Any, ref: FidelityReference) -> dict[str, Any]:
    """Score a loaded edgerun.Model against `ref` (see the module docstring), plus what ran:
    backend, providers, threads, profile and this machine's architecture and CPU."""
    rows = []
    for tokens in ref.tokens:
        ids = [int(t) for t in tokens]
        _, logits = model.decode_logits(
            ids[: ref.context], len(ids) - ref.context, forced=ids[ref.context :]
        )
        rows.append(logits)
    info = model.info
    return {
        **score_rows(ref, rows),
        "backend": info.backend,
        "providers": list(info.providers),
        "threads": info.threads,
        "profile": info.profile_id,
        "machine": {"arch": platform.machine(), "cpu": _cpu_name()},
    }


def judge(metrics: dict[str, Any], bound: dict[str, float]) -> tuple[str, list[str]]:
    """(which top-1 was gated: "all", "confident" or "none", the reasons `metrics` fail
    `bound`, empty when they pass); top-1 gated as the validation gates it."""
    gate = Thresholds(**{k: float(bound[k]) for k in BOUND_KEYS})
    m = metrics
    return gate_metrics(
        gate, m["ppl_ratio"], m["mean_kl"], m["top1_agreement"], m["top1_confident"],
        m["confident_tokens"], m["tokens"],
    )  # fmt: skip


def widened_bound(gate: dict[str, Any], export: dict[str, Any]) -> dict[str, float]:
    """The validation `gate`, each bound widened to the export's own number where that is worse
    (the slice is short, so its numbers scatter around the whole text's)."""
    bound = {k: float(gate[k]) for k in BOUND_KEYS}
    bound["max_ppl_ratio"] = max(bound["max_ppl_ratio"], export["ppl_ratio"])
    bound["max_mean_kl"] = max(bound["max_mean_kl"], export["mean_kl"])
    _, top1 = gated_top1(
        export["top1_agreement"],
        export["top1_confident"],
        export["confident_tokens"],
        export["tokens"],
    )
    if top1 is not None:
        bound["min_top1_agreement"] = min(bound["min_top1_agreement"], top1)
    return bound


def ship_reference(artifact_dir: Path, reference: Any, gate: Thresholds) -> dict[str, Any]:
    """Write the compact reference of `reference` (edgerun.exporters.validate.Reference) into
    the artifact being exported; return the manifest's `fidelity` block, whose `export` and
    `bound` the runtime check fills in (record_export_score) once the artifact is loadable."""
    ref = build_reference(reference.windows, reference.logprobs)
    write_reference(Path(artifact_dir) / REFERENCE_FILE, ref)
    return {
        "reference": REFERENCE_FILE,
        "what": WHAT,
        **ref.describe(),
        "gate": asdict(gate),
        "export": None,
        "bound": None,
    }


def record_export_score(block: dict[str, Any], score: dict[str, Any]) -> None:
    """Put the build machine's score and the bound it implies into the manifest's block."""
    block["export"] = score
    block["bound"] = widened_bound(block["gate"], score)


def verify_fidelity(
    artifact: Path, profile: str | None = None, threads: int | None = None
) -> dict[str, Any]:
    """Score the artifact at `artifact` on this machine against its shipped reference.

    Returns {"device": metrics and what ran, "export": the build machine's, "bound",
    "passed", "reasons"}. Raises EdgerunError when the artifact has no fidelity reference
    (exported without validation, or by an older edgerun) or the reference is invalid."""
    import edgerun

    block, ref = shipped_reference(Path(artifact))
    with edgerun.load(artifact, profile, threads=threads) as model:
        device = score_model(model, ref)
    gated, reasons = judge(device, block["bound"])
    return {
        "artifact": str(artifact),
        "device": device,
        "export": block["export"],
        "bound": block["bound"],
        "top1_gated": gated,
        "passed": not reasons,
        "reasons": reasons,
    }


def shipped_reference(artifact: Path) -> tuple[dict[str, Any], FidelityReference]:
    """The manifest's fidelity block and the reference it names, both checked (they come from
    elsewhere). Raises EdgerunError when the artifact ships none or it is invalid."""
    block = _block(read_manifest(artifact), artifact)
    where = contained(artifact, block["reference"], "fidelity.reference", "re-export the artifact")
    return block, read_reference(where)


def fidelity_summary(
    artifact: Path, profile: str | None = None, threads: int | None = None
) -> dict[str, Any]:
    """verify_fidelity in short, for a results file (`lab bench --fidelity`): passed, reasons,
    and the device's and the export's mean KL, top-1 and PPL ratio; {"passed": None, "error"}
    when the artifact cannot be scored (no reference, a bad one, a load failure)."""
    try:
        found = verify_fidelity(artifact, profile, threads)
    except EdgerunError as exc:
        return {"passed": None, "error": str(exc)}
    keys = ("mean_kl", "top1_agreement", "ppl_ratio")
    export = found["export"]
    return {
        "passed": found["passed"],
        "reasons": found["reasons"],
        "device": {k: found["device"][k] for k in keys},
        "export": None if export is None else {k: export[k] for k in keys},
    }


def _block(manifest: dict[str, Any], artifact: Path) -> dict[str, Any]:
    """The manifest's fidelity block, its numbers checked (the manifest comes from elsewhere)."""
    block = manifest.get("fidelity")
    if not isinstance(block, dict):
        raise EdgerunError(
            f"{artifact} ships no fidelity reference",
            "re-export it with validation (edgerun export without --no-validate)",
        )
    where = f"{artifact}/edgerun.json: fidelity"
    bound, export = block.get("bound"), block.get("export")
    if not isinstance(bound, dict) or not all(is_number(bound.get(k)) for k in BOUND_KEYS):
        raise EdgerunError(f"{where}.bound must hold {', '.join(BOUND_KEYS)}", REEXPORT)
    numbers = ("mean_kl", "top1_agreement", "ppl_ratio")
    if export is not None and not (
        isinstance(export, dict)
        and all(is_number(export.get(k)) for k in numbers)
        and isinstance(export.get("machine", {}), dict)
    ):
        raise EdgerunError(f"{where}.export must hold the numbers {', '.join(numbers)}", REEXPORT)
    return block


def _cpu_name() -> str:
    from edgerun.device.machine import machine_facts

    try:
        return str(machine_facts().cpu_model)
    except (OSError, ValueError, AttributeError):
        return platform.processor() or "unknown"
