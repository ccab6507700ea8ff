"""`edgerun tune`: find the fastest faithful settings for this machine and write them into a user
profile that `run`, `serve`, `bench` and `edgerun.load` then pick up without flags.

    result = edgerun.tune.tune("out/", budget_s=600)   # an artifact or an export directory
    print(result.profile_path, result.outcome.winner.config)

The pieces: space (what is searched), topology (big.LITTLE / SMT core sets), trial (one
configuration measured by the bench engine), fidelity (the on-device KL gate), search
(a pruned screen of single-setting changes), profile_write (the profile and its provenance).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgerun.core.errors import EdgerunError
from edgerun.tune.search import OBJECTIVES, Fidelity, Measure, Outcome
from edgerun.tune.space import Space


@dataclass
class TuneResult:
    """The written profile (None with write=False), its id, the search outcome, provenance."""

    profile_path: Path | None
    profile_id: str
    outcome: Outcome
    provenance: dict[str, Any]


def tune(
    path: str | Path,
    profile: str | None = None,
    *,
    budget_s: float = 600.0,
    objective: str = "decode",
    power: str = "auto",
    prompt_tokens: int = 64,
    gen_tokens: int = 64,
    write: bool = True,
    progress: Callable[[str], None] | None = None,
    space: Space | None = None,
    measure: Measure | None = None,
    fidelity: Fidelity | None = None,
) -> TuneResult:
    """Search the settings of `path` (an artifact, a model file or an export directory) on this
    machine and write the winner as the user profile ``tuned-<profile id>``.

    profile: the base profile (id or .toml; None: detected). budget_s: wall-clock limit of the
    search. objective: "decode" (tok/s, higher), "ttft" (seconds, lower) or "energy" (decode
    J/token, lower; needs a meter: `power` is a --power value, the profile's meter first under
    auto, and no meter is a one-line refusal before anything runs). prompt_tokens /
    gen_tokens: each repetition's workload. space / measure / fidelity: replace the planned
    space, the bench-engine trials and the on-device fidelity gate (tests, studies).
    Raises EdgerunError for a bad argument, a path without an artifact, or no backend."""
    from edgerun.device.resolve import resolve_profile
    from edgerun.tune.result import provenance_of, tuned_profile
    from edgerun.tune.search import Search

    if objective not in OBJECTIVES:
        raise EdgerunError(
            f"unknown objective '{objective}'",
            f"use one of {', '.join(OBJECTIVES)}",
        )
    if budget_s <= 0:
        raise EdgerunError(f"the budget must be positive, got {budget_s:g} s", "e.g. --budget 10m")
    base = resolve_profile(profile).profile
    if base is not None and base.tuned.get("base"):
        from edgerun.device.profile import get_profile

        base = get_profile(str(base.tuned["base"]))  # re-tune from the hand-written profile
    path = Path(path)
    if not path.exists():
        raise EdgerunError(f"{path} does not exist", "pass an artifact or an export directory")
    if base is None:
        raise EdgerunError("no device profile to start from", "pass --profile ID")
    energy = None
    if objective == "energy" and measure is None:
        from edgerun.tune.trial import energy_account

        energy = energy_account(power, base.power_meter)
    space = space or _plan(path, base, base.threads)
    baseline = 0.0
    if measure is None:
        measure, baseline = _bench_trials(space, base, prompt_tokens, gen_tokens, energy)
    if fidelity is None:
        from edgerun.tune.fidelity import FidelityGate

        fidelity = FidelityGate(space.arms[0].mean_kl, space.arms[0])
    say = progress or (lambda _msg: None)
    if energy is not None:
        energy.start()
    try:
        outcome = Search(space, measure, fidelity, objective, budget_s, progress=say).run()
    finally:
        if energy is not None:
            energy.stop()
    provenance = provenance_of(space, outcome, objective, baseline, base)
    tuned = tuned_profile(base, space, outcome, objective)
    written = None
    if write:
        from edgerun.tune.profile_write import write_tuned_profile

        written = write_tuned_profile(tuned, provenance)
    return TuneResult(written, tuned.id, outcome, provenance)


def _plan(path: Path, base: Any, threads: int | None) -> Space:
    from edgerun.backends.select import _physical_cores
    from edgerun.tune.plan import plan_space
    from edgerun.tune.topology import read_topology

    topology = read_topology()
    default = threads or _physical_cores() or len(topology.cpus)
    return plan_space(path, base, topology, default)


def _bench_trials(
    space: Space, base: Any, prompt: int, gen: int, energy: Any = None
) -> tuple[Measure, float]:
    from edgerun.bench.workload import Workload
    from edgerun.tune.trial import BenchTrials, background_load

    workload = Workload([prompt], gen, reps=1, warmup=1, profile=base.id)
    baseline = background_load()
    cpus = {**space.affinity}
    return BenchTrials(workload, baseline, cpus, energy), baseline
