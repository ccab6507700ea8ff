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

import os
import time
from dataclasses import dataclass
from typing import Any

from edgerun.bench.busy import OTHERS_CORES_LIMIT, STEAL_LIMIT, BusyWindow
from edgerun.bench.harness import Drive
from edgerun.bench.metrics import rep_metrics
from edgerun.bench.worker import WorkerProcess, load_worker
from edgerun.bench.workload import Workload
from edgerun.tune.space import Arm, Config, threads_and_cpus


def background_load(seconds: float = 2.0) -> float:
    """Other processes' CPU use (cores) over `seconds` of doing nothing: the steady level a
    trial is compared with."""
    window = BusyWindow().start()
    time.sleep(seconds)
    return float(window.stop().get("others_cores") or 0.0)


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
    timeout_s: the longest wait for one worker reply."""

    workload: Workload
    baseline: float
    cpus: dict[str, list[int]]
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
            while len(kept) < reps and discarded <= reps:
                threads, _ = threads_and_cpus(config, self.cpus)
                row = self._rep(worker, drive, prompt, threads or 1)
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
        self, worker: WorkerProcess, drive: Drive, prompt: int, threads: int
    ) -> dict[str, Any]:
        window = BusyWindow(lambda: [os.getpid(), worker.proc.pid]).start()
        reply = drive.generate(worker, self.workload, prompt)
        row = rep_metrics(reply["t_start"], reply["token_times"], prompt)
        row["peak_rss"] = (reply.get("memory") or {}).get("peak_rss")
        row["busy"] = window.stop(own_cores=threads)
        return row
