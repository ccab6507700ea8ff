"""Progress of long steps on a terminal (rich): a live line per step with its detail, the count
in it, the time elapsed and the time remaining, then one closing line with its wall time. Used by
`pull` (download, dequantize) and by every export stage."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

# A stage yields a callable that shows a detail line ("12 tensors") while the stage runs.
StageDetail = Callable[[str], None]
StageHook = Callable[[str], contextlib.AbstractContextManager[StageDetail]]


# A count in a stage's detail line ("window 3/12", "tensor 40/290"): what the ETA is made from.
_COUNT = re.compile(r"(\d+)/(\d+)")


def stage_printer(console: Any, indent: str = "  ") -> StageHook:
    """A stage hook: while the stage runs, a live line (rich) with its detail, the count in it
    (`3/12`), the time elapsed and, once a count is known, the time remaining; then
    `✓ name (seconds)` on the console. Off a terminal only the closing lines are printed."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    @contextlib.contextmanager
    def stage(name: str) -> Iterator[StageDetail]:
        start = time.perf_counter()
        columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=20)]
        columns += [MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA")]
        live = {"console": console, "transient": True, "disable": not console.is_terminal}
        with Progress(*columns, TimeRemainingColumn(), **live) as bar:
            task = bar.add_task(f"{name} ...", total=None)

            def show(detail: str) -> None:
                found = _COUNT.search(detail)
                done, total = (int(found[1]), int(found[2])) if found else (None, None)
                # done - 1 of them finished: the one named has just started
                finished = max(done - 1, 0) if done is not None else None
                bar.update(task, description=f"{name}: {detail}", completed=finished, total=total)

            yield show
        console.print(f"{indent}[green]✓[/] {name} ({time.perf_counter() - start:.1f} s)")

    return stage
