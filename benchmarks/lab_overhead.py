"""What lab mode costs against plain `edgerun bench` on the same machine.

Same artifact (a fixed-speed artifact of --mib MiB from benchmarks/fixed_speed.py, so the model's
own speed is fixed and known), same workload, medians over --rounds:

- plain: edgerun.bench.harness.run_bench in this process (what `edgerun bench` runs);
- lab, cached: edgerun lab bench on one local worker (edgerun.lab.local, this host as itself)
  that already has the artifact
  (scheduling, the decline check, the store lookup, the result coming back);
- lab, ship: the same with a fresh artifact each round (its id changes), so it is shipped in
  chunks and verified on arrival first.

Run: .venv/bin/python -m benchmarks.lab_overhead [--mib 64 --rounds 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.fixed_speed import LOADER, make_artifact
from edgerun.bench.harness import run_bench
from edgerun.bench.workload import Workload
from edgerun.lab.cluster import connect, list_devices
from edgerun.lab.local import LocalLab
from edgerun.lab.orchestrate import Lab, LabRun
from edgerun.lab.results import ResultsFile
from edgerun.lab.ship import local_artifact
from edgerun.power.account import energy_for

ROOT = Path(__file__).resolve().parent.parent
WORKLOAD = Workload([32], 16, 2, 0)


def _artifact(root: Path, i: int, mib: int) -> Path:
    return make_artifact(root / f"a{i}", bytes([i % 256]) * (mib << 20))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lab-overhead-"))
    lab = LocalLab(root, {"PYTHONPATH": str(ROOT)})  # the worker imports LOADER
    lab.add_worker("dev")
    options = {"workload": WORKLOAD.to_json(), "power": "none", "assume_watts": None, "idle_seconds": 0.0, "loader": LOADER}  # fmt: skip
    times: dict[str, list[float]] = {"plain": [], "lab_cached": [], "lab_ship": []}
    try:
        client = connect(lab.address)
        lab.wait_for(client, {"dev"})
        [device] = list_devices(client)
        cached = _artifact(root, 0, args.mib)
        Lab(client, LabRun([local_artifact(cached)], dict(options))).run(
            [device], ResultsFile(None)
        )
        for i in range(1, args.rounds + 1):
            t0 = time.perf_counter()
            run_bench([cached], WORKLOAD, energy_for("none", None, None), 0.0, LOADER)
            times["plain"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            Lab(client, LabRun([local_artifact(cached)], dict(options))).run(
                [device], ResultsFile(None)
            )
            times["lab_cached"].append(time.perf_counter() - t0)
            fresh = _artifact(root, i, args.mib)
            t0 = time.perf_counter()
            [run] = Lab(client, LabRun([local_artifact(fresh)], dict(options))).run(
                [device], ResultsFile(None)
            )
            times["lab_ship"].append(time.perf_counter() - t0)
            assert run["lab"]["shipped"]["fixed-speed"] == args.mib << 20, run["lab"]
        client.close()
    finally:
        lab.close()
        shutil.rmtree(root, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "machine": platform.node(), "cpus": __import__("os").cpu_count(), "mib": args.mib,
        "rounds": args.rounds, "workload": WORKLOAD.to_json(), "seconds": times,
        "median_s": med,
        "scheduling_overhead_s": med["lab_cached"] - med["plain"],
        "transfer_s": med["lab_ship"] - med["lab_cached"],
        "transfer_mib_s": args.mib / max(med["lab_ship"] - med["lab_cached"], 1e-9),
    }  # fmt: skip
    out = Path(__file__).parent / "results" / "lab_overhead.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "seconds"}, indent=2))


if __name__ == "__main__":
    main()
