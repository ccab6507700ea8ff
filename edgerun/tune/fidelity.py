"""Fidelity as a constraint: a setting that can change outputs (flash attention, a quantized KV
cache, another artifact or backend) is eligible only when it passes a check on this device.

The check (kernels differ per ISA, so it runs where the artifact runs): the artifact is loaded
with the candidate's settings and with its default ones, both are fed the same short slice of
the shipped evaluation text token by token with the KV cache (teacher forcing), and the mean KL
divergence of the candidate's next-token distributions from the default's must stay within

    bound = max(DRIFT_FLOOR, DRIFT_SHARE x the manifest's validation mean KL)

i.e. the setting may add at most a tenth of the error the export was validated with. Another
artifact of the same export is eligible when its own validation passed with a mean KL at most
ARTIFACT_SLACK above the default artifact's; its settings are then checked against its own
defaults as above. (When artifacts ship a reference of their own, `edgerun verify --fidelity`,
the artifact check should score against it on the device instead.)
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


@dataclass
class FidelityGate:
    """The search's fidelity function: caches the default logits per arm and one verdict per
    (arm, output-changing settings). `logits` is injectable (tests fake the backend)."""

    default_kl: float | None
    default_arm: Arm | None = None
    logits: Callable[[Arm, Config], np.ndarray] = forced_logits
    checks: list[dict[str, Any]] = field(default_factory=list)
    _reference: dict[str, np.ndarray] = field(default_factory=dict)
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
        try:
            if ref.name not in self._reference:
                self._reference[ref.name] = self.logits(ref, ref.default())
            drift = mean_kl(self._reference[ref.name], self.logits(arm, config))
        except EdgerunError as exc:  # e.g. a KV cache type this build or model cannot use
            self.checks.append({"arm": arm.name, "config": config, "error": exc.message})
            return f"cannot run with these settings: {exc.message}"
        bound = drift_bound(arm.mean_kl)
        self.checks.append({"arm": arm.name, "config": config, "kl": drift, "bound": bound})
        if drift > bound:
            return f"mean KL {drift:.4g} from the default settings > bound {bound:.4g}"
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
