"""One trial: a configuration measured by the bench engine.

Each trial starts a bench worker (edgerun.bench.worker: the model alone in its own process, as
`edgerun bench` runs it), loads the artifact with the configuration's backend, options, threads
and CPU affinity, warms up once, and times `reps` generations. A repetition during which the
machine got busier (edgerun.bench.busy: other processes' CPU time rose above the level measured
before the search, or the hypervisor stole time) is discarded and redone, up to as many extra
repetitions again.

A steady background load is part of the machine being tuned (a phone's other apps, the study's
pinned load); a burst that comes and goes disturbs one trial, and that trial is not evidence.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgerun.bench.busy import OTHERS_CORES_LIMIT, STEAL_LIMIT, BusyWindow
from edgerun.bench.harness import Drive, measure_rep
from edgerun.bench.metrics import metric_of
from edgerun.bench.worker import WorkerProcess, load_worker
from edgerun.bench.workload import Workload
from edgerun.core.errors import EdgerunError
from edgerun.power.account import EnergyAccount
from edgerun.power.registry import Selection, select
from edgerun.tune.space import Arm, Config, threads_and_cpus


def background_load(seconds: float = 2.0) -> float:
    """Other processes' CPU use (cores) over `seconds` of doing nothing: the steady level a
    trial is compared with."""
    window = BusyWindow().start()
    time.sleep(seconds)
    return float(window.stop().get("others_cores") or 0.0)


def energy_account(
    power: str = "auto", preferred: str | None = None, root: Path = Path("/")
) -> EnergyAccount:
    """The meter `--objective energy` measures J/token with (`power`: a --power value, the
    profile's `preferred` meter first under auto). No meter is a one-line refusal naming what
    is missing: an estimate (--assume-watts) would only rank by time per token again."""
    selection = select(power, root, preferred)  # a named meter that is missing raises here
    if selection.meter is None:
        tried = ", ".join(selection.tried or {})
        why = f"none works here (tried {tried})" if tried else selection.reason
        raise EdgerunError(
            f"--objective energy needs a power meter: {why}",
            "`edgerun power` says why each is unavailable; name an external one with"
            ' --power cmd:"COMMAND", or tune --objective decode',
        )
    return EnergyAccount(selection)


def disturbed(report: dict[str, Any], baseline: float) -> bool:
    """Whether other processes took more CPU during a repetition than the steady background
    load did before the search, or the hypervisor stole time. Less than the baseline is not a
    disturbance: on a busy machine our own threads take their share from the others."""
    others = report.get("others_cores")
    if others is None:
        return False
    return bool(
        others - baseline > OTHERS_CORES_LIMIT or (report.get("steal_share") or 0.0) > STEAL_LIMIT
    )


@dataclass
class BenchTrials:
    """The measure function of edgerun.tune.search.Search, on this machine.

    workload: prompt length and new tokens of every repetition (its reps / warmup unused here:
    the search asks for reps); baseline: background_load(); cpus: affinity name -> CPU ids;
    energy: the started meter of --objective energy (None: energy is not measured);
    timeout_s: the longest wait for one worker reply."""

    workload: Workload
    baseline: float
    cpus: dict[str, list[int]]
    energy: EnergyAccount | None = None
    timeout_s: float = 300.0

    def __call__(self, arm: Arm, config: Config, reps: int) -> tuple[list[dict[str, Any]], int]:
        worker = WorkerProcess(arm.artifact, timeout_s=self.timeout_s)
        try:
            self._load(worker, arm, config)
            drive = Drive()
            prompt = self.workload.prompt_tokens[0]
            drive.generate(worker, self.workload, prompt)  # warm-up
            kept: list[dict[str, Any]] = []
            discarded = 0
            threads, _ = threads_and_cpus(config, self.cpus)
            while len(kept) < reps and discarded <= reps:
                row = self._rep(worker, drive, prompt, threads or 1, len(kept) + discarded)
                if disturbed(row["busy"], self.baseline):
                    discarded += 1
                else:
                    kept.append(row)
            return kept, discarded
        finally:
            worker.close()

    def _load(self, worker: WorkerProcess, arm: Arm, config: Config) -> None:
        threads, affinity = threads_and_cpus(config, self.cpus)
        workload = Workload(
            self.workload.prompt_tokens,
            self.workload.gen_tokens,
            threads=threads,
            profile=self.workload.profile,
            ctx=self.workload.ctx,
        )
        options = {"backend": arm.backend, **arm.options(config)}
        load_worker(worker, workload, Drive().loader, options=options, affinity=affinity or None)

    def _rep(
        self, worker: WorkerProcess, drive: Drive, prompt: int, threads: int, rep: int
    ) -> dict[str, Any]:
        """One repetition as the bench measures it, with the values the search ranks by."""
        energy = self.energy or EnergyAccount(Selection(None, "not measured by this search"))
        row = measure_rep(worker, self.workload, prompt, energy, rep, drive, threads)
        for metric in ("peak_rss", "decode_j_per_token"):
            row[metric] = metric_of(row, metric)
        return row
