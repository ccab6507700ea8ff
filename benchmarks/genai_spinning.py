"""``python -m benchmarks.genai_spinning [ARTIFACT]``: whether onnxruntime-genai spins its
intra-op threads, which `edgerun tune` cannot change on that backend (edgerun.tune.space
``run_fixed``). Spinning threads burn CPU while they wait for work, so the process's CPU time
per wall second over a decode loop with a short gap between tokens tells spinning from
sleeping threads. onnxruntime with spinning on and off sets the two marks, in the same run.
Default ARTIFACT: the tune study's SmolLM2 onnx-int4 export (it needs genai_config.json).
Results: benchmarks/results/genai-spinning-<time>.json."""

from __future__ import annotations

import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from benchmarks import machine, work_dir, write_results

GAP_S = 0.002  # between tokens: what a spinning pool burns and a sleeping one does not


def cpu_per_wall(backend: Any, steps: int) -> float:
    """Process CPU seconds per wall second over `steps` decode steps, GAP_S apart."""
    backend.prefill(list(range(1, 33)), 33 + steps + 20)
    for _ in range(10):
        backend.decode(5)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        backend.decode(5)
        time.sleep(GAP_S)
    return (time.process_time() - cpu) / (time.perf_counter() - wall)


@click.command()
@click.argument("artifact", required=False, type=click.Path(exists=True, path_type=Path))
@click.option("--threads", default=2, show_default=True)
@click.option("--steps", default=200, show_default=True, help="Decode steps per reading.")
@click.option("--rounds", default=3, show_default=True, help="Readings per setting, interleaved.")
def main(artifact: Path | None, threads: int, steps: int, rounds: int) -> None:
    """CPU per wall second: onnxruntime spinning, not spinning, and genai; results JSON."""
    from edgerun.backends.base import Settings, resolve_artifact
    from edgerun.backends.genai import GenaiBackend
    from edgerun.backends.ort import OrtBackend

    found = resolve_artifact(artifact or work_dir() / "tune" / "smollm2-135m" / "onnx-int4")

    def spinning(on: bool) -> Any:
        config = {"session.intra_op.allow_spinning": "1" if on else "0"}
        return OrtBackend(found, Settings(threads=threads, options={"session_config": config}))

    makers = {
        "onnxruntime, spinning": lambda: spinning(True),
        "onnxruntime, not spinning": lambda: spinning(False),
        "genai": lambda: GenaiBackend(found, Settings(threads=threads)),
    }
    readings: dict[str, list[float]] = {name: [] for name in makers}
    for _ in range(rounds):
        for name, make in makers.items():
            backend = make()
            try:
                readings[name].append(cpu_per_wall(backend, steps))
            finally:
                backend.close()
            click.echo(f"{name}: {readings[name][-1]:.2f} CPUs per wall second")
    out = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine.describe(),
        "artifact": str(found.path),
        "threads": threads, "steps": steps, "gap_s": GAP_S,
        "cpu_per_wall": readings,
        "median": {name: statistics.median(v) for name, v in readings.items()},
    }  # fmt: skip
    click.echo(f"results: {write_results('genai-spinning', out)}")


if __name__ == "__main__":
    main()
