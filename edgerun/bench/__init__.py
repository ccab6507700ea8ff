"""Benchmark harness: workloads, per-artifact worker subprocesses, results, comparison.

:func:`run` is the library entry point; ``edgerun bench`` parses its options and calls it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def run(
    artifacts: Sequence[str | Path],
    *,
    prompt_tokens: Sequence[int] = (128, 512),
    gen_tokens: int = 128,
    reps: int = 5,
    warmup: int = 1,
    threads: int | None = None,
    profile: str | None = None,
    ctx: int | None = None,
    seed: int = 0,
    power: str = "auto",
    assume_watts: float | None = None,
    idle_seconds: float = 10.0,
    loader: str | None = None,
    progress: Callable[[str], None] | None = None,
    device: dict[str, Any] | None = None,
    libraries: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Benchmark `artifacts` (each in its own worker process, repetitions interleaved) and return
    one run of the results schema (edgerun.bench.results): workload, power, order, artifacts with
    their reps and summaries, plus id, time, device fingerprint and library versions.

    prompt_tokens, gen_tokens, reps, warmup, threads, profile, ctx, seed: the workload (threads and
    profile default to the detected device profile's). power: a meter (``auto``, ``none``, a
    registry name or ``cmd:COMMAND``); assume_watts: estimate energy at this power when no meter
    is used (labelled as an estimate). idle_seconds: idle baseline before the run. loader: the
    ``module:function`` the workers load models with (default: ``edgerun:load``). progress: called with a short message at
    each step (1 + per artifact: 1 + (warmup + reps) x prompt lengths). device, libraries: the
    fingerprint and library versions the run records (default: this machine's; the lab passes
    the ones its device advertised).

    Raises EdgerunError for a bad workload value, an unknown profile or meter, a path that is not
    an artifact, a prompt longer than the context, or a worker that fails."""
    from edgerun.bench.device import fingerprint, library_versions
    from edgerun.bench.harness import run_bench
    from edgerun.bench.results import new_run
    from edgerun.bench.worker import DEFAULT_LOADER
    from edgerun.bench.workload import Workload
    from edgerun.device.resolve import resolve_profile
    from edgerun.power.account import energy_for

    workload = Workload(list(prompt_tokens), gen_tokens, reps, warmup, threads, profile, ctx, seed)
    # once, before anything runs (an unknown profile fails here): the fingerprint and every
    # worker share it, so a run detects the machine once however many artifacts it has
    resolved = resolve_profile(profile)
    device = device or fingerprint(resolved)
    preferred = (device.get("profile") or {}).get("power_meter")
    energy = energy_for(power, assume_watts, preferred)
    paths = [Path(a) for a in artifacts]
    loader = loader or DEFAULT_LOADER
    body = run_bench(paths, workload, energy, idle_seconds, loader, progress, resolved)
    return new_run(body, device, libraries or library_versions())


__all__ = ["run"]
