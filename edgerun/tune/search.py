"""The search: successive halving over a coordinate-sampled candidate set, with fidelity as a
gate and a wall-clock budget.

Why successive halving and not a model-based optimiser (optuna's TPE): the space is small and
categorical (a handful of dimensions of 2-6 values per artifact), the dominant problem is noise
(a trial on a shared 2-core machine can swing 4x), and every trial costs a model load. Halving
spends repetitions where they decide something: every candidate gets a short measurement, the
best third gets more, until the spread separates them; a TPE needs dozens of trials before its
model beats random sampling and would still need the same repeat logic. No new dependency.

The candidates are each arm's default plus every single-dimension change from it (the settings
rarely interact beyond that), then, per arm, the combination of every change that helped.
Candidates that can change outputs are checked for fidelity before they are measured; a refused
one is recorded and never measured.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgerun.bench.metrics import stats
from edgerun.tune.space import Arm, Config, Space

OBJECTIVES = {"decode": ("decode_tok_s", 1.0), "ttft": ("ttft_s", -1.0)}
#: A candidate replaces the default only when its median is better by this share...
MIN_GAIN = 0.02
#: ...and by more than this many standard errors of the difference.
NOISE_SIGMAS = 2.0
FIRST_REPS = 2
MAX_REPS = 8
KEEP_SHARE = 1 / 3


@dataclass(eq=False)  # compared by identity: one object per configuration
class Samples:
    """Every kept repetition of one configuration, over all its trials."""

    arm: Arm
    config: Config
    reps: list[dict[str, Any]] = field(default_factory=list)
    discarded: int = 0
    trials: int = 0
    error: str | None = None

    def values(self, metric: str) -> list[float]:
        return [float(r[metric]) for r in self.reps if r.get(metric) is not None]

    def score(self, objective: str) -> float | None:
        """The median of the objective's metric, signed so that higher is better."""
        metric, sign = OBJECTIVES[objective]
        summary = stats(list(self.values(metric)))
        return None if summary is None else sign * summary["median"]

    def stderr(self, objective: str) -> float:
        vals = self.values(OBJECTIVES[objective][0])
        summary = stats(list(vals))
        if summary is None or summary["n"] < 2:
            return math.inf
        return float(summary["stdev"]) / math.sqrt(summary["n"])

    def to_json(self) -> dict[str, Any]:
        """The provenance of one configuration: where, what, and its measured spread."""
        return {
            "arm": self.arm.name,
            "config": self.config,
            "trials": self.trials,
            "reps": len(self.reps),
            "discarded_busy": self.discarded,
            "error": self.error,
            **{
                m: stats(list(self.values(m)))
                for m in ("decode_tok_s", "prefill_tok_s", "ttft_s", "peak_rss")
            },
        }


#: measure(arm, config, reps) -> (kept reps, reps discarded as disturbed); raises EdgerunError.
Measure = Callable[[Arm, Config, int], tuple[list[dict[str, Any]], int]]
#: fidelity(arm, config) -> None when eligible, else the reason it is refused.
Fidelity = Callable[[Arm, Config], str | None]


@dataclass
class Outcome:
    """What the search found: the winner and the default with their samples, every candidate
    measured, those refused for fidelity, the trial count and why it stopped."""

    winner: Samples
    default: Samples
    measured: list[Samples]
    refused: list[dict[str, Any]]
    trials: int
    stopped: str
    seconds: float


class Search:
    """One search over `space`; `clock` is injectable so tests can drive the budget."""

    def __init__(
        self,
        space: Space,
        measure: Measure,
        fidelity: Fidelity,
        objective: str = "decode",
        budget_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.space, self.measure, self.fidelity = space, measure, fidelity
        self.objective, self.budget_s, self.clock = objective, budget_s, clock
        self.progress = progress or (lambda _msg: None)
        self.samples: dict[str, Samples] = {}
        self.refused: list[dict[str, Any]] = []
        self.trials = 0
        self.stopped = "converged"
        self._started = 0.0
        self._trial_s: list[float] = []

    def run(self) -> Outcome:
        """Search until the candidates are separated or the budget is spent."""
        self._started = self.clock()
        default = self._candidate(self.space.arms[0], self.space.arms[0].default())
        assert default is not None  # the default never needs a fidelity check
        self._measure_all([default], FIRST_REPS)  # before any fidelity check: always measured
        first = [c for arm in self.space.arms for c in self._singles(arm)]
        self._measure_all([c for c in first if c is not default], FIRST_REPS)
        combined = [c for arm in self.space.arms for c in self._combined(arm)]
        self._measure_all(combined, FIRST_REPS)
        self._halve(default)
        ranked = self._ranked()
        best = ranked[0] if ranked else default
        winner = best if self._beats(best, default) else default
        return Outcome(
            winner, default, ranked, self.refused, self.trials, self.stopped,
            self.clock() - self._started,
        )  # fmt: skip

    # ---- candidates ----------------------------------------------------------------------

    def _candidate(self, arm: Arm, config: Config) -> Samples | None:
        key = json.dumps([arm.name, config], sort_keys=True, default=str)
        if key in self.samples:
            return self.samples[key]
        if arm is not self.space.arms[0] or arm.output_key(config) != arm.output_key(arm.default()):
            if not self._affordable():  # a fidelity check loads the model twice: budget it too
                return None
            started = self.clock()
            reason = self.fidelity(arm, config)
            self._trial_s.append(self.clock() - started)  # judged like a trial by _affordable
            if reason is not None:
                self.refused.append({"arm": arm.name, "config": config, "reason": reason})
                self.progress(f"refused {arm.name} {config}: {reason}")
                return None
        self.samples[key] = Samples(arm, config)
        return self.samples[key]

    def _singles(self, arm: Arm) -> list[Samples]:
        """The arm's default and every single-dimension change from it that passes fidelity."""
        base = arm.default()
        configs = [base] + [
            {**base, dim.name: value} for dim in arm.dims for value in dim.values[1:]
        ]
        found = (self._candidate(arm, c) for c in configs)
        return [c for c in found if c is not None]

    def _combined(self, arm: Arm) -> list[Samples]:
        """The arm's default with every single change that beat it, when two or more did."""
        base = self.samples.get(json.dumps([arm.name, arm.default()], sort_keys=True, default=str))
        if base is None:
            return []
        config, changed = dict(base.config), 0
        for dim in arm.dims:
            options = [
                s for s in self._arm_samples(arm) if _only_change(s.config, base.config) == dim.name
            ]
            best = max(options, key=self._key, default=None)
            if best is not None and self._beats(best, base):
                config[dim.name], changed = best.config[dim.name], changed + 1
        found = self._candidate(arm, config) if changed > 1 else None
        return [found] if found is not None else []

    def _arm_samples(self, arm: Arm) -> list[Samples]:
        return [s for s in self.samples.values() if s.arm is arm]

    # ---- measuring -----------------------------------------------------------------------

    def _left_s(self) -> float:
        return self.budget_s - (self.clock() - self._started)

    def _affordable(self) -> bool:
        """Whether one more trial fits the budget (judged by the slowest trial so far)."""
        expected = max(self._trial_s, default=0.0)
        if self._left_s() > expected:
            return True
        self.stopped = "budget"
        return False

    def _measure_all(self, candidates: list[Samples], reps: int) -> None:
        for sample in candidates:
            if sample.error is not None or not self._affordable():
                continue
            started = self.clock()
            try:
                kept, discarded = self.measure(sample.arm, sample.config, reps)
            except Exception as exc:  # a setting the backend refuses is a result, not a crash
                sample.error = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
                kept, discarded = [], 0
            sample.reps += kept
            sample.discarded += discarded
            sample.trials += 1
            self.trials += 1
            self._trial_s.append(self.clock() - started)
            self._report(sample, reps, discarded)

    def _report(self, sample: Samples, reps: int, discarded: int) -> None:
        score = sample.score(self.objective)
        metric = OBJECTIVES[self.objective][0]
        result = sample.error or (
            f"{metric} {abs(score):.4g} (median of {len(sample.reps)})"
            if score is not None
            else "no rep kept"
        )
        busy = f", {discarded} busy reps redone" if discarded else ""
        settings = " ".join(f"{k}={v}" for k, v in sample.config.items())
        self.progress(
            f"trial {self.trials} (+{reps} reps{busy}): {sample.arm.name} {settings}: {result}"
        )

    def _halve(self, default: Samples) -> None:
        """Keep the best third (and the default), double their repetitions, until one is left
        or they reach MAX_REPS."""
        alive = self._ranked()
        reps = FIRST_REPS
        while len(alive) > 1 and reps < MAX_REPS and self.stopped != "budget":
            keep = max(1, math.ceil(len(alive) * KEEP_SHARE))
            alive = alive[:keep]
            if default not in alive:
                alive.append(default)
            self._measure_all(alive, reps)
            reps *= 2
            alive = [s for s in self._ranked() if s in alive]
            if len(alive) == 2 and default in alive and not self._close(*alive):
                break

    def _key(self, sample: Samples) -> float:
        score = sample.score(self.objective)
        return -math.inf if score is None else score

    def _ranked(self) -> list[Samples]:
        """Measured candidates, best first."""
        measured = [s for s in self.samples.values() if s.score(self.objective) is not None]
        return sorted(measured, key=self._key, reverse=True)

    def _beats(self, a: Samples, b: Samples) -> bool:
        """a is better than b by MIN_GAIN and by more than NOISE_SIGMAS standard errors."""
        sa, sb = a.score(self.objective), b.score(self.objective)
        if a is b or sa is None or sb is None:
            return False
        noise = math.hypot(a.stderr(self.objective), b.stderr(self.objective))
        return sa - sb > max(MIN_GAIN * abs(sb), NOISE_SIGMAS * noise if noise < math.inf else 0.0)

    def _close(self, a: Samples, b: Samples) -> bool:
        return not (self._beats(a, b) or self._beats(b, a))


def _only_change(config: Config, base: Config) -> str | None:
    """The one dimension in which `config` differs from `base`, else None."""
    diff = [k for k in base if config.get(k) != base[k]]
    return diff[0] if len(diff) == 1 else None
