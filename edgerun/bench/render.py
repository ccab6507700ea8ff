"""Terminal rendering of bench rows with rich, plus the notes that keep energy numbers honest."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from edgerun.bench.results import COLUMNS, fmt

#: The terminal shows fewer columns than the files (the energy label is printed under it).
TERMINAL = [
    c
    for c in COLUMNS
    if c[0]
    not in (
        "device",
        "profile",
        "threads",
        "file_backed_mb",
        "anonymous_mb",
        "mean_kl",
        "energy_method",
    )
]


LABELS = ("artifact", "backend", "device", "profile", "energy_method")


def table(
    rows: list[dict[str, Any]],
    title: str,
    columns: list[tuple[str, str]] = TERMINAL,
) -> Table:
    """A rich Table of `rows`; label columns keep their full text, numbers wrap their headers."""
    t = Table(title=Text(title), box=box.SIMPLE_HEAD, pad_edge=False)
    for key, header in columns:
        if key in LABELS:
            widest = max([len(fmt(r.get(key))) for r in rows] + [len(header)])
            t.add_column(header, justify="left", no_wrap=True, min_width=min(widest, 28))
        else:
            t.add_column(header, justify="right")
    for row in rows:
        # Text, not str: a '[' in a shared results file is data, not rich markup.
        t.add_row(*(Text(fmt(row.get(k))) for k, _ in columns))
    return t


def energy_notes(runs: list[dict[str, Any]]) -> list[str]:
    """One line per run saying where energy numbers come from, or why there are none."""
    notes = []
    for run in runs:
        p = run.get("power") or {}
        if p.get("estimate"):
            notes.append(f"energy: ESTIMATE, {p['source']}")
        elif p.get("available"):
            idle = (
                f", idle {p['idle_watts']:.2f} W subtracted for net"
                if p.get("idle_watts") is not None
                else ""
            )
            bound = " (a lower bound)" if p.get("lower_bound") else ""
            notes.append(f"energy: {p['source']} [scope {p['scope']}, {p['method']}]{bound}{idle}")
            if p.get("error"):
                notes.append(f"energy: the meter failed during the run: {p['error']}")
        else:
            hint = f" ({p['hint']})" if p.get("hint") else ""
            notes.append(f"energy: null: {p.get('reason')}{hint}")
    return notes


def print_rows(
    rows: list[dict[str, Any]],
    runs: list[dict[str, Any]],
    title: str,
    console: Console | None = None,
    columns: list[tuple[str, str]] = TERMINAL,
) -> None:
    """Print the table of `columns` and the energy notes."""
    # piped output (a file, CI log) gets a fixed width instead of rich's 80-column default
    console = console or (Console() if sys.stdout.isatty() else Console(width=150))
    console.print(table(rows, title, columns))
    for note in dict.fromkeys(energy_notes(runs)):
        console.print(Text(note), highlight=False, soft_wrap=True)


@contextmanager
def progress_bar(console: Console, total: int) -> Iterator[Callable[[str], None]]:
    """A rich progress bar of `total` steps (terminal only: none in logs and pipes); yields the
    `progress` callback of edgerun.bench.run, which advances it one step per message."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as progress:
        task = progress.add_task("bench", total=total)

        def step(message: str) -> None:
            progress.update(task, description=message, advance=1)

        yield step
