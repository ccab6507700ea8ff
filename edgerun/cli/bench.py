"""`edgerun bench ARTIFACT...`: tokens/s, latency, memory and energy, interleaved over artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from edgerun.cli.options import workload_options

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

    from edgerun.bench.workload import Workload
    from edgerun.power.account import EnergyAccount


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from exc


def _refuse_existing(paths: list[Path | None], append: bool) -> None:
    from edgerun.errors import EdgerunError

    for path in paths:
        if path is not None and path.exists() and not append:
            raise EdgerunError(
                f"{path} already exists",
                "pass --append to add this run to it, or choose a new name",
            )


@click.command()
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=Path))
@workload_options
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write results JSON.")
@click.option(
    "--append",
    is_flag=True,
    help="Add this run to an existing --json file (--csv / --md are then rewritten from all its runs).",
)
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), help="Write a CSV table.")
@click.option("--md", "md_path", type=click.Path(path_type=Path), help="Write a Markdown table.")
def bench(
    artifacts: tuple[Path, ...],
    prompt_tokens: str,
    gen_tokens: int,
    reps: int,
    warmup: int,
    threads: int | None,
    profile: str | None,
    ctx: int | None,
    power_spec: str,
    idle_seconds: float,
    assume_watts: float | None,
    json_path: Path | None,
    append: bool,
    csv_path: Path | None,
    md_path: Path | None,
    loader: str,
) -> None:
    """Benchmark artifacts: load time, TTFT, prefill and decode tok/s, per-token latency, peak
    RSS (file-backed vs anonymous), and energy from the best meter (or null with the reason).

    Each artifact runs in its own subprocess; repetitions are interleaved (A B A B ...)."""
    from rich.console import Console

    from edgerun.bench.device import fingerprint, library_versions
    from edgerun.bench.render import print_rows
    from edgerun.bench.results import new_run, rows, to_csv, to_markdown, write_results, write_table
    from edgerun.bench.workload import Workload
    from edgerun.power.account import energy_for

    workload = Workload(_ints(prompt_tokens), gen_tokens, reps, warmup, threads, profile, ctx)
    _refuse_existing([json_path, csv_path, md_path], append)
    if profile is not None:
        from edgerun.profile import get_profile

        get_profile(profile)  # an unknown profile fails here, before anything runs
    console = Console(stderr=True)
    device = fingerprint(profile)
    preferred = (device.get("profile") or {}).get("power_meter")
    energy = energy_for(power_spec, assume_watts, preferred)
    body = _run_with_progress(console, list(artifacts), workload, energy, idle_seconds, loader)
    run = new_run(body, device, library_versions())
    data = write_results(json_path, run, append) if json_path else {"runs": [run]}
    table = rows(data if append else {"runs": [run]})
    for path, render in ((csv_path, to_csv), (md_path, to_markdown)):
        if path is not None:
            write_table(path, render(table))
    print_rows(
        rows({"runs": [run]}),
        [run],
        f"edgerun bench ({reps} reps, {gen_tokens} new tokens, medians)",
    )


def _run_with_progress(
    console: Console,
    artifacts: list[Path],
    workload: Workload,
    energy: EnergyAccount,
    idle_seconds: float,
    loader: str,
) -> dict[str, Any]:
    """run_bench with a rich progress bar over the repetitions (terminal only)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from edgerun.bench.harness import run_bench

    n_prompts = len(workload.prompt_tokens)
    total = 1 + len(artifacts) * (1 + (workload.warmup + workload.reps) * n_prompts)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,  # no bar in logs and pipes
    ) as progress:
        task = progress.add_task("bench", total=total)

        def step(message: str) -> None:
            progress.update(task, description=message, advance=1)

        return run_bench(artifacts, workload, energy, idle_seconds, loader, step)
