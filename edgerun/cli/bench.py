"""`edgerun bench ARTIFACT...`: tokens/s, latency, memory and energy, interleaved over artifacts."""

from __future__ import annotations

from pathlib import Path

import click

from edgerun.cli.options import wide_option, workload_options


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from exc


def _refuse_existing(paths: list[Path | None], append: bool) -> None:
    from edgerun.core.errors import EdgerunError

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
@wide_option
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
    wide: bool,
) -> None:
    """Benchmark artifacts: load time, TTFT, prefill and decode tok/s, per-token latency, peak
    RSS (file-backed vs anonymous), and energy from the best meter (or null with the reason).

    Each artifact runs in its own subprocess; repetitions are interleaved (A B A B ...)."""
    from rich.console import Console

    import edgerun.bench
    from edgerun.bench.render import print_rows, progress_bar, speed_lines
    from edgerun.bench.results import rows, to_csv, to_markdown, write_results, write_table

    _refuse_existing([json_path, csv_path, md_path], append)
    prompts = _ints(prompt_tokens)
    total = 1 + len(artifacts) * (1 + (warmup + reps) * len(prompts))
    with progress_bar(Console(stderr=True), total) as step:
        run = edgerun.bench.run(
            list(artifacts),
            prompt_tokens=prompts,
            gen_tokens=gen_tokens,
            reps=reps,
            warmup=warmup,
            threads=threads,
            profile=profile,
            ctx=ctx,
            power=power_spec,
            assume_watts=assume_watts,
            idle_seconds=idle_seconds,
            loader=loader,
            progress=step,
        )
    data = write_results(json_path, run, append) if json_path else {"runs": [run]}
    table = rows(data if append else {"runs": [run]})
    for path, render in ((csv_path, to_csv), (md_path, to_markdown)):
        if path is not None:
            write_table(path, render(table))
    shown = rows({"runs": [run]})
    print_rows(
        shown,
        [run],
        f"edgerun bench ({reps} reps, {gen_tokens} new tokens, medians ±stdev)",
        wide=wide,
    )
    click.echo("\n".join(speed_lines(shown)))
