"""`edgerun compare RESULT...`: join bench results across devices and artifacts."""

from __future__ import annotations

from pathlib import Path

import click

from edgerun.cli.options import wide_option


@click.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--baseline", help="Row number, or a unique part of device/profile/artifact/backend.")
@click.option("--md", "md_path", type=click.Path(path_type=Path), help="Write a Markdown table.")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), help="Write a CSV table.")
@click.option("--html", "html_path", type=click.Path(path_type=Path), help="Write an HTML report.")
@click.option("--plot", "png_path", type=click.Path(path_type=Path), help="Write a PNG chart.")
@wide_option
def compare(
    results: tuple[Path, ...],
    baseline: str | None,
    md_path: Path | None,
    csv_path: Path | None,
    html_path: Path | None,
    png_path: Path | None,
    wide: bool,
) -> None:
    """Join result files by device, profile, artifact and backend; show tok/s, TTFT, peak RAM,
    J/token, size and validation side by side, with ratios against a baseline row."""
    from edgerun.bench.compare import (
        COMPARE_COLUMNS,
        TERMINAL_COLUMNS,
        add_ratios,
        label,
        load,
        pick_baseline,
    )
    from edgerun.bench.render import print_rows
    from edgerun.bench.results import to_csv, to_markdown, write_table

    table, runs = load(list(results))
    base = pick_baseline(table, baseline)
    add_ratios(table, base)
    if md_path:
        write_table(md_path, to_markdown(table, COMPARE_COLUMNS))
    if csv_path:
        write_table(csv_path, to_csv(table))
    if html_path:
        from edgerun.bench.report import to_html

        write_table(html_path, to_html(table, runs, base))
    if png_path:
        from edgerun.bench.report import write_png

        write_png(table, png_path, runs)
    print_rows(
        table,
        runs,
        f"edgerun compare (baseline: row {base['row']}, {label(base)})",
        columns=TERMINAL_COLUMNS,
        wide=wide,
    )
