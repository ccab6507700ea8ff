"""Fidelity as a constraint: a setting that can change outputs (the MatMulNBits accuracy level,
flash attention, a quantized KV cache, another artifact or backend) is eligible only when it
passes a check on this device. Kernels differ per ISA, so the check runs where the artifact runs,
the artifact loaded with the candidate's settings and with its default ones, one thread each.

Against the reference model, where the artifact ships one (`fidelity-reference.npz`, what
`edgerun verify --fidelity` scores; every validated export has it): both are fed the first
REFERENCE_SEGMENTS slices of it token by token with the KV cache (teacher forcing) and scored
against the reference model's top-k log-probs; the candidate's mean KL from the reference may
exceed the default settings' on the same slices by at most

    bound = max(DRIFT_FLOOR, DRIFT_SHARE x the manifest's validation mean KL)

i.e. a setting may add at most a tenth of the error the export was validated with, and one that
moves the outputs towards the reference model (fp32 instead of int8 compute) is not refused for
moving them. Without a reference (an artifact exported with --no-validate, a bare model file),
the candidate's next-token distributions on a short slice of the evaluation text are compared
with the default settings' instead, their mean KL within the same bound.

Another artifact of the same export is eligible when its own validation passed with a mean KL
at most ARTIFACT_SLACK above the default artifact's; its settings are then checked against its
own defaults as above.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgerun.core.errors import EdgerunError
from edgerun.tune.space import Arm, Config

DRIFT_SHARE = 0.1
DRIFT_FLOOR = 0.002
ARTIFACT_SLACK = 0.1
PREFIX_TOKENS = 16
SCORED_TOKENS = 48
#: Slices of the shipped reference scored per check: 2 of its 4, 64 scored tokens as the slice
#: without a reference (the default and the candidate are scored on the same ones, paired).
REFERENCE_SEGMENTS = 2


def drift_bound(mean_kl: float | None) -> float:
    """The largest mean KL a setting may add, given the export's validation mean KL."""
    return max(DRIFT_FLOOR, DRIFT_SHARE * (mean_kl or 0.0))


def mean_kl(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Mean over positions of KL(reference || candidate), both [positions, vocab] logits."""
    from edgerun.exporters.validate import log_softmax

    p, q = log_softmax(reference), log_softmax(candidate)
    return float((np.exp(p) * (p - q)).sum(axis=-1).mean())


def forced_logits(arm: Arm, config: Config) -> np.ndarray:
    """The artifact's logits on the evaluation slice with `config`'s backend and options."""
    import edgerun
    from edgerun.exporters.reference import read_eval_text

    options = arm.options(config)
    # One thread: the outputs do not depend on the thread count (each output row is one
    # thread's), and one thread never fights a contended machine (2 llama.cpp threads under
    # load decoded 0.3 tok/s, making a check take minutes).
    with edgerun.load(arm.artifact, backend=arm.backend, threads=1, **options) as model:
        ids = model.tokenizer.encode(read_eval_text(None))[: PREFIX_TOKENS + SCORED_TOKENS]
        return model.forced_logits(ids, PREFIX_TOKENS)


def reference_kl(arm: Arm, config: Config) -> float | None:
    """Mean KL from the reference model of the artifact's outputs with `config`'s settings,
    scored on this machine against the first REFERENCE_SEGMENTS slices of the reference the
    artifact ships; None when it ships none. Raises EdgerunError for an invalid reference or a
    load that fails."""
    import dataclasses
    from pathlib import Path

    import edgerun
    from edgerun.core.manifest import MANIFEST_NAME, read_manifest
    from edgerun.exporters.fidelity_check import score_model, shipped_reference

    path = Path(arm.artifact)
    if not (path / MANIFEST_NAME).is_file() or not read_manifest(path).get("fidelity"):
        return None
    _, ref = shipped_reference(path)
    n = REFERENCE_SEGMENTS
    part = dataclasses.replace(
        ref,
        tokens=ref.tokens[:n],
        top_ids=ref.top_ids[:n],
        top_logprobs=ref.top_logprobs[:n],
        tail_logprob=ref.tail_logprob[:n],
        target_logprob=ref.target_logprob[:n],
    )
    with edgerun.load(path, backend=arm.backend, threads=1, **arm.options(config)) as model:
        return float(score_model(model, part)["mean_kl"])


@dataclass
class FidelityGate:
    """The search's fidelity function: caches the default's score (or logits) per arm and one
    verdict per (arm, output-changing settings). `scored` and `logits` are injectable (tests
    fake the backend)."""

    default_kl: float | None
    default_arm: Arm | None = None
    logits: Callable[[Arm, Config], np.ndarray] = forced_logits
    scored: Callable[[Arm, Config], float | None] = reference_kl
    checks: list[dict[str, Any]] = field(default_factory=list)
    _reference: dict[str, np.ndarray] = field(default_factory=dict)
    _baseline: dict[str, float | None] = field(default_factory=dict)
    _verdicts: dict[tuple[Any, ...], str | None] = field(default_factory=dict)

    def __call__(self, arm: Arm, config: Config) -> str | None:
        key = (arm.name, arm.output_key(config))
        if key not in self._verdicts:
            self._verdicts[key] = self._check(arm, config)
        return self._verdicts[key]

    def _check(self, arm: Arm, config: Config) -> str | None:
        refused = self._artifact_refusal(arm)
        if refused is not None:
            self.checks.append({"arm": arm.name, "config": config, "refused": refused})
            return refused
        # the same artifact on another backend is compared with the default backend's outputs
        same = self.default_arm is not None and self.default_arm.artifact == arm.artifact
        ref = self.default_arm if same and self.default_arm is not None else arm
        if ref is arm and arm.output_key(config) == arm.output_key(arm.default()):
            return None
        bound = drift_bound(arm.mean_kl)
        try:
            baseline = self._baseline_of(ref)
            if baseline is not None:
                kl = self.scored(arm, config)
                if kl is not None:
                    return self._judged(arm, config, kl, baseline, bound)
            if ref.name not in self._reference:
                self._reference[ref.name] = self.logits(ref, ref.default())
            drift = mean_kl(self._reference[ref.name], self.logits(arm, config))
        except EdgerunError as exc:  # e.g. a KV cache type this build or model cannot use
            self.checks.append({"arm": arm.name, "config": config, "error": exc.message})
            return f"cannot run with these settings: {exc.message}"
        self.checks.append({"arm": arm.name, "config": config, "kl": drift, "bound": bound})
        if drift > bound:
            return f"mean KL {drift:.4g} from the default settings > bound {bound:.4g}"
        return None

    def _baseline_of(self, ref: Arm) -> float | None:
        """The default settings' mean KL from the reference model (None: no usable reference,
        recorded once, and the check compares with the default's outputs instead)."""
        if ref.name not in self._baseline:
            try:
                self._baseline[ref.name] = self.scored(ref, ref.default())
            except EdgerunError as exc:
                self._baseline[ref.name] = None
                self.checks.append({"arm": ref.name, "reference_unusable": exc.message})
        return self._baseline[ref.name]

    def _judged(
        self, arm: Arm, config: Config, kl: float, baseline: float, bound: float
    ) -> str | None:
        self.checks.append(
            {"arm": arm.name, "config": config, "reference_kl": kl,
             "default_reference_kl": baseline, "bound": bound}
        )  # fmt: skip
        if kl > baseline + bound:
            return (
                f"mean KL from the reference model {kl:.4g} > the default settings'"
                f" {baseline:.4g} + bound {bound:.4g}"
            )
        return None

    def _artifact_refusal(self, arm: Arm) -> str | None:
        """Why another artifact may not replace the default one (None: it may)."""
        if arm.mean_kl is None or self.default_kl is None:
            return None if arm.mean_kl == self.default_kl else "no validation to compare"
        limit = self.default_kl * (1 + ARTIFACT_SLACK)
        if arm.mean_kl > limit:
            return (
                f"its export's mean KL {arm.mean_kl:.4g} > {limit:.4g} (default artifact's + 10%)"
            )
        return None
