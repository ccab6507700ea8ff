"""The search: a screen of single-setting changes pruned by what can move the objective, their
combination, other arms only where they can compete, fidelity as a gate, a close-call
confirmation and a wall-clock budget.

Why not a model-based optimiser (optuna's TPE) or successive halving: the space is small and
categorical (a handful of dimensions of 2-7 values per artifact), the dominant problem is noise
(a trial on a shared 2-core machine can swing 4x), and every trial costs a model load. A TPE
needs dozens of trials before its model beats random sampling; halving over every
single-setting change re-measured its survivors (10 trials for 8 of 14 configurations in the
first study). No new dependency.

The order of work, each trial ``FIRST_REPS`` repetitions of one configuration, measurements of
a configuration accumulating over its trials:

1. the default (what `run` picks untuned) of the first arm, always, before any fidelity check;
2. the screen: each dimension changed alone from the default. Settings interact (on a busy
   2-core machine one thread beat two with spinning threads, but two threads that do not spin
   were 8x faster than either), so no change is committed before every dimension is seen.
   Pruned without measuring, each for a stated reason:
   - a dimension that cannot move the objective (``Dim.affects``: n_batch only batches the
     prompt, mmap only pages the weights in: neither moves decode speed or J/token);
   - a dimension that is moot at the default (``Dim.moot``: spinning with one thread);
   - further steps of an ordered dimension (``Dim.ordered``: graph optimisation levels) after a
     step that did not help;
   - a value that computes what the starting value computes (``Dim.same``: a graph optimisation
     level whose optimized graph is the starting level's, byte for byte);
   - a value a probe measured slower beyond doubt before the search (``Dim.slower``: an
     accuracy level whose one-row MatMulNBits products alone took more than 1.5x the exported
     level's, edgerun.backends.ort_nbits_probe; for decode and energy, not ttft);
3. the combination of every change that beat the default, when two or more did; then, where
   the arm's best now beats its start, the values that looked like a gain (ahead by at least
   ``MIN_GAIN``) but not beyond the noise are screened again from that best (at most
   ``SCREEN_PASSES`` passes): under load, flash attention's gain at two contended threads hid
   in the noise (19.4 against 14.6 tok/s) and showed only at the one thread the first pass
   chose. The first time a best beats its start by more than ``PRUNE_SHARE``, the start was
   another regime (contended threads), so every value the start did not beat (a tie within
   the noise) is screened again, not only the hopeful ones: in a later study flash attention
   read 35.6 against 36.2 tok/s at two contended threads and was 18% faster at one. A value
   that lost beyond the noise there is not: its loss showed through the contention;
4. every other arm (another artifact or backend) starts from its default with the settings it
   shares with the best so far; an arm whose start is beaten by more than ``PRUNE_SHARE`` is
   dropped, otherwise it is screened like the first, except for a value that already lost by
   more than ``PRUNE_SHARE`` when one dimension changed on an arm with the same kernels (the
   same artifact under onnxruntime and onnxruntime-genai, which runs it in an onnxruntime
   session: one thread instead of two slows the same kernels on both; and the start's value
   that a change beat, two threads under load after one thread beat them by 28%), and except
   for a configuration that runs such a value of a setting its backend cannot change
   (``Arm.fixed``: onnxruntime-genai spins its threads, so where spinning lost beyond
   ``PRUNE_SHARE`` on onnxruntime, genai's two-thread start is not measured: under load the
   study measured it at 81.0 tok/s against onnxruntime's 79.9 with spinning, 104.7 without);
5. confirmation: while the best and the default are too close to call and the best is still
   ahead by at least ``MIN_GAIN``, and by more than the rounds left could resolve at the spread
   measured so far (a lead the noise of their repetitions would still cover after them is a
   tie whatever they read), both are measured again, at most ``CONFIRM_ROUNDS`` times.
   The best replaces the default only when it beats it (by ``MIN_GAIN`` and beyond the noise),
   so a lead under ``MIN_GAIN`` is a tie whatever the noise: re-measuring it would only test
   whether noise can make it look like a gain.

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
from edgerun.tune.space import Arm, Config, Dim, Space

#: objective -> (the per-repetition metric, +1 when higher is better else -1)
OBJECTIVES = {
    "decode": ("decode_tok_s", 1.0),
    "ttft": ("ttft_s", -1.0),
    "energy": ("decode_j_per_token", -1.0),
}
#: A candidate replaces the incumbent only when its median is better by this share...
MIN_GAIN = 0.02
#: ...and by more than this many standard errors of the difference.
NOISE_SIGMAS = 2.0
FIRST_REPS = 3
#: Another arm whose first measurement is this much worse than the best so far is not descended.
PRUNE_SHARE = 0.10
CONFIRM_ROUNDS = 2
#: Screens of one arm: the first from its start, the others from the best the last one found.
SCREEN_PASSES = 3


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

    def stderr(self, objective: str, more: int = 0) -> float:
        """The median's standard error, or what it would be after `more` repetitions at the
        spread measured so far (inf before two repetitions)."""
        vals = self.values(OBJECTIVES[objective][0])
        summary = stats(list(vals))
        if summary is None or summary["n"] < 2:
            return math.inf
        return float(summary["stdev"]) / math.sqrt(summary["n"] + more)

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
                for m in (
                    "decode_tok_s",
                    "prefill_tok_s",
                    "ttft_s",
                    "peak_rss",
                    "decode_j_per_token",
                )
            },
        }


#: measure(arm, config, reps) -> (kept reps, reps discarded as disturbed); raises EdgerunError.
Measure = Callable[[Arm, Config, int], tuple[list[dict[str, Any]], int]]
#: fidelity(arm, config) -> None when eligible, else the reason it is refused.
Fidelity = Callable[[Arm, Config], str | None]


@dataclass
class Outcome:
    """What the search found: the winner and the default with their samples, every candidate
    measured, those refused for fidelity, the trial count, why it stopped, and what it pruned
    without measuring (dimensions, arms) and why."""

    winner: Samples
    default: Samples
    measured: list[Samples]
    refused: list[dict[str, Any]]
    trials: int
    stopped: str
    seconds: float
    pruned: list[dict[str, Any]] = field(default_factory=list)


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
        # (kernels, dimension, value) -> the arm on which that value, changed alone, lost by
        # more than PRUNE_SHARE, and by how much
        self._lost: dict[tuple[Any, ...], tuple[str, float]] = {}
        self.refused: list[dict[str, Any]] = []
        self.pruned: list[dict[str, Any]] = []
        self.trials = 0
        self.stopped = "converged"
        self._started = 0.0
        self._trial_s: list[float] = []

    def run(self) -> Outcome:
        """Search until every arm is screened and the winner is confirmed, or the budget is
        spent."""
        self._started = self.clock()
        first = self.space.arms[0]
        default = self._candidate(first, first.default())
        assert default is not None  # the default never needs a fidelity check
        self._measure(default)  # before any fidelity check: always measured
        self._screen(first, default)
        for arm in self.space.arms[1:]:
            self._other_arm(arm)
        self._confirm(self._best() or default, default)
        # the fastest of those that beat the default: a confirmed candidate that now beats it
        # is not dropped for one measured less, with a higher median that does not (the idle
        # gguf study kept the default after a q8_0 KV cache was confirmed ahead of it)
        winner = next((s for s in self._ranked() if self._beats(s, default)), default)
        return Outcome(
            winner, default, self._ranked(), self.refused, self.trials, self.stopped,
            self.clock() - self._started, self.pruned,
        )  # fmt: skip

    # ---- the screen ----------------------------------------------------------------------

    def _screen(self, arm: Arm, start: Samples) -> None:
        """Screen `arm` from `start`, then again from the arm's best while that beats the
        start it was screened from (at most SCREEN_PASSES screens)."""
        only: set[tuple[str, Any]] | None = None  # None: the first pass tries every value
        broadened = False
        for _ in range(SCREEN_PASSES):
            hopeful, unsettled = self._screen_once(arm, start, only)
            best = max(
                (
                    s
                    for s in self.samples.values()
                    if s.arm is arm and s.score(self.objective) is not None
                ),
                key=self._key,
                default=start,
            )
            if best is start or not self._beats(best, start):
                return
            # a start that one change beats by more than PRUNE_SHARE was measured in another
            # regime (two threads contending with a background load hide what else matters):
            # once, every value that tied there is screened again from the best
            only = hopeful
            if not broadened and self._dominated(start, best):
                only, broadened = unsettled, True
            if not only:
                return
            start = best

    def _screen_once(
        self, arm: Arm, start: Samples, only: set[tuple[str, Any]] | None
    ) -> tuple[set[tuple[str, Any]], set[tuple[str, Any]]]:
        """Every searched dimension of `arm` changed alone from `start` (only the (dimension,
        value) pairs in `only` when given), then the combination of every change that beat
        `start`, when two or more did. A configuration measured before is not measured again.
        Returns (hopeful, unsettled): the values that were ahead of `start` by MIN_GAIN but not
        beyond the noise, and those that `start` did not beat (ties within the noise)."""
        combined, changed = dict(start.config), 0
        hopeful: set[tuple[str, Any]] = set()
        unsettled: set[tuple[str, Any]] = set()
        for dim in arm.dims:
            why = self._skip(dim, start.config)
            if why is not None:
                self._prune_once({"arm": arm.name, "dim": dim.name, "reason": why})
                continue
            tried = [start]
            for value in self._steps(dim, start.config[dim.name]):
                if only is not None and (dim.name, value) not in only:
                    continue
                # a probe measured it slower beyond doubt, at one-row (decode-step) products:
                # a prompt's many-row products are another kernel, so ttft still screens it
                if value in dim.slower and self.objective != "ttft":
                    self._prune_once({"arm": arm.name, "dim": dim.name, "value": value,
                                      "reason": dim.slower[value]})  # fmt: skip
                    continue
                if dim.same.get(value) == start.config[dim.name]:
                    why = f"computes what {dim.same[value]} computes"
                    self._prune_once({"arm": arm.name, "dim": dim.name, "value": value,
                                      "reason": why})  # fmt: skip
                    continue  # not a step: an ordered walk goes on to the next value
                lost = self._lost.get((arm.kernels, dim.name, value))
                if lost is not None:
                    self.pruned.append({
                        "arm": arm.name, "dim": dim.name, "value": value,
                        "reason": f"lost {lost[1]:.0%} on {lost[0]}, the same kernels",
                    })  # fmt: skip
                    if dim.ordered:
                        break  # further steps go further the same way
                    continue
                why = self._runs_lost(arm, {**start.config, dim.name: value})
                if why is not None:
                    self.pruned.append({"arm": arm.name, "dim": dim.name, "value": value,
                                        "reason": why})  # fmt: skip
                    continue
                cand = self._candidate(arm, {**start.config, dim.name: value})
                if cand is None or cand is start:
                    continue
                if not (cand.trials or self._measure(cand)) or cand.score(self.objective) is None:
                    continue
                self._note_loss(arm, dim, value, cand, start)
                if self._lead(cand, start) >= MIN_GAIN and not self._beats(cand, start):
                    hopeful.add((dim.name, value))
                if not self._beats(start, cand):
                    unsettled.add((dim.name, value))
                tried.append(cand)
                if dim.ordered and not self._beats(cand, tried[-2]):
                    break  # an ordered dimension: a step that did not help ends the walk
            top = max(tried, key=self._key)
            if self._beats(top, start):
                combined[dim.name], changed = top.config[dim.name], changed + 1
        if changed > 1:
            # normalised there: a change that is moot beside the others is no change
            found = self._candidate(arm, combined)
            if found is not None and not found.trials:
                self._measure(found)
        return hopeful, unsettled

    def _prune_once(self, entry: dict[str, Any]) -> None:
        """Record why something was not measured, once, not once per screening pass."""
        if entry not in self.pruned:
            self.pruned.append(entry)

    def _lead(self, a: Samples, b: Samples) -> float:
        """How far a's median is ahead of b's, as a share of b's (-inf without scores)."""
        sa, sb = a.score(self.objective), b.score(self.objective)
        if sa is None or sb is None or sb == 0:
            return -math.inf
        return (sa - sb) / abs(sb)

    def _note_loss(self, arm: Arm, dim: Dim, value: Any, cand: Samples, start: Samples) -> None:
        """Remember a value that lost by more than PRUNE_SHARE when `dim` alone changed: the
        changed value to the start's, or the start's to the changed value (two threads after
        one thread beat them by 28% under load)."""
        for loser, winner, lost in ((cand, start, value), (start, cand, start.config[dim.name])):
            if self._dominated(loser, winner):
                share = -self._lead(loser, winner)
                self._lost.setdefault((arm.kernels, dim.name, lost), (arm.name, share))

    def _runs_lost(self, arm: Arm, config: Config) -> str | None:
        """Why `config` of `arm` is not measured: it runs a setting its backend cannot change
        (``Arm.fixed``), not moot there, at a value that lost by more than PRUNE_SHARE on the
        same kernels (None: it does not)."""
        runs = {**{d.name: d.values[0] for d in arm.fixed}, **config}
        for dim in arm.fixed:
            if dim.moot is not None and dim.moot(runs):
                continue
            value = dim.values[0]
            lost = self._lost.get((arm.kernels, dim.name, value))
            if lost is not None:
                return (
                    f"runs {dim.name}={value}, which {arm.backend} cannot change, and that "
                    f"lost {lost[1]:.0%} on {lost[0]}, the same kernels"
                )
        return None

    def _skip(self, dim: Dim, config: Config) -> str | None:
        """Why `dim` is not searched at `config` (None: it is)."""
        if dim.affects is not None and self.objective not in dim.affects:
            return f"cannot move {self.objective} (affects {', '.join(dim.affects)} only)"
        if dim.moot is not None and dim.moot(config):
            return "moot at the starting settings"
        return None

    @staticmethod
    def _steps(dim: Dim, current: Any) -> list[Any]:
        """The values to try from `current`: the others in order (an ordered dimension walks
        away from `current` towards the end of its list)."""
        if dim.ordered:
            return dim.values[dim.values.index(current) + 1 :]
        return [v for v in dim.values if v != current]

    def _other_arm(self, arm: Arm) -> None:
        """Another artifact or backend: its default with the shared settings of the best so
        far, screened unless that start is clearly worse than the best."""
        best = self._best()
        shared = {}
        if best is not None:
            shared = {
                d.name: best.config[d.name]
                for d in arm.dims
                if d.name in best.config and best.config[d.name] in d.values
            }
        config = arm.normalise({**arm.default(), **shared})
        why = self._runs_lost(arm, config)
        if why is not None:
            self.pruned.append({"arm": arm.name, "reason": why})
            return
        start = self._candidate(arm, config)
        if start is None or not self._measure(start):
            return
        if best is not None and self._dominated(start, best):
            self.pruned.append({"arm": arm.name, "reason": "its start was dominated"})
            return
        self._screen(arm, start)

    def _best(self) -> Samples | None:
        ranked = self._ranked()
        return ranked[0] if ranked else None

    def _dominated(self, a: Samples, b: Samples) -> bool:
        """b beats a, by more than PRUNE_SHARE."""
        sa, sb = a.score(self.objective), b.score(self.objective)
        if sa is None or sb is None or not self._beats(b, a):
            return False
        return sb - sa > PRUNE_SHARE * abs(sb)

    def _confirm(self, best: Samples, default: Samples) -> None:
        """Measure the best and the default again while they are too close to call, and the
        best is still ahead: once a round puts it behind the default it cannot replace it
        (the default is kept on a close call), so another round would buy nothing (the idle
        onnx-int4 study spent 4 of its 10 trials on two rounds of such a call)."""
        for done in range(CONFIRM_ROUNDS):
            if best is default or not self._close(best, default):
                return
            if self._key(best) <= self._key(default):
                self.pruned.append({"arm": best.arm.name, "reason": "fell behind the default"})
                return
            lead = self._lead(best, default)
            if lead < MIN_GAIN:
                self.pruned.append({
                    "arm": best.arm.name, "config": best.config,
                    "reason": f"ahead of the default by {lead:.1%} < {MIN_GAIN:.0%}: a tie",
                })  # fmt: skip
                return
            left = CONFIRM_ROUNDS - done
            reach = self._reach(best, default, left * FIRST_REPS)
            if lead <= reach:
                self.pruned.append({
                    "arm": best.arm.name, "config": best.config,
                    "reason": f"ahead of the default by {lead:.1%}, under the {reach:.1%} that "
                    f"{left} more round(s) could show at the spread measured: a tie",
                })  # fmt: skip
                return
            for sample in (best, default):
                self._measure(sample)

    def _reach(self, a: Samples, b: Samples, more: int) -> float:
        """The smallest lead of a over b, as a share of b's score, that `_beats` could accept
        after `more` further repetitions of each at the spreads measured so far. A lead under
        it stays a tie unless those repetitions move the medians apart or narrow the spread:
        measuring them would only test whether noise can make it look like a gain."""
        spread = [s.stderr(self.objective, more) for s in (a, b)]
        sb = b.score(self.objective)
        if not sb or math.inf in spread:  # no spread known yet: nothing to rule out
            return 0.0
        return NOISE_SIGMAS * math.hypot(*spread) / abs(sb)

    # ---- candidates ----------------------------------------------------------------------

    def _candidate(self, arm: Arm, config: Config) -> Samples | None:
        config = arm.normalise(config)  # one sample per distinct computation
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

    def _measure(self, sample: Samples) -> bool:
        """One trial of FIRST_REPS repetitions; whether `sample` has a score afterwards."""
        if sample.error is None and self._affordable():
            started = self.clock()
            try:
                kept, discarded = self.measure(sample.arm, sample.config, FIRST_REPS)
            except Exception as exc:  # a setting the backend refuses is a result, not a crash
                sample.error = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
                kept, discarded = [], 0
            sample.reps += kept
            sample.discarded += discarded
            sample.trials += 1
            self.trials += 1
            self._trial_s.append(self.clock() - started)
            self._report(sample, FIRST_REPS, discarded)
        return sample.score(self.objective) is not None

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
