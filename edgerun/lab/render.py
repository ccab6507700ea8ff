"""Terminal output of lab mode (rich): the device table, live progress per device, and the
status of every device x artifact pair at the end."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgerun.core.untrusted import is_number

GiB = 1 << 30


#: The device table's columns, most wanted first (what does not fit the terminal is left out from
#: the end and named): the versions come early, since version skew is what the table is for.
DEVICE_COLUMNS = [
    ("device", "device"),
    ("edgerun", "edgerun"),
    ("onnxruntime", "onnxruntime"),
    ("llama-cpp", "llama-cpp"),
    ("profile", "profile"),
    ("cores", "cores"),
    ("ram_gib", "RAM GiB"),
    ("arch", "arch"),
    ("os", "OS"),
    ("accelerators", "accelerators"),
    ("cpu", "CPU"),
]
DEVICE_LABELS = ("device", "profile", "arch", "os", "accelerators", "cpu")


def device_rows(devices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per device that answered (DEVICE_COLUMNS' keys); versions kept whole as text."""
    rows = []
    for d in devices:
        if "error" in d:
            continue
        libs = d.get("libraries") or {}
        rows.append(
            {
                "device": d["id"],
                "edgerun": _text(libs.get("edgerun")),
                "onnxruntime": _text(libs.get("onnxruntime")),
                "llama-cpp": _text(libs.get("llama-cpp-python")),
                "profile": _text(d.get("profile")),
                "cores": d.get("cores"),
                "ram_gib": f"{d['ram_bytes'] / GiB:.1f}" if d.get("ram_bytes") else None,
                "arch": _text(d.get("arch")),
                "os": _text(d.get("os")),
                "accelerators": ", ".join(d.get("accelerators") or []) or None,
                "cpu": _text(d.get("cpu")),
            }
        )
    return rows


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def print_devices(
    devices: list[dict[str, Any]],
    warnings: list[str],
    console: Console | None = None,
    wide: bool = False,
) -> None:
    """The connected devices as a table that fits the terminal (edgerun.bench.render), a line per
    device that failed to answer, then the version-skew warnings."""
    from rich.text import Text

    from edgerun.bench.render import print_table, table_console

    console = console or table_console()
    title = f"{len(devices)} lab devices"
    print_table(device_rows(devices), title, DEVICE_COLUMNS, console, wide, DEVICE_LABELS)
    for d in devices:
        if "error" in d:
            console.print(Text(f"{d['id']}: {d['error']}", style="red"), soft_wrap=True)
    for warning in warnings:
        Console(stderr=True).print(Text(f"warning: {warning}"), soft_wrap=True)


@contextlib.contextmanager
def progress_display(
    console: Console, device_ids: list[str]
) -> Iterator[Callable[[str, str], None]]:
    """A live line per device (rich); yields the callback that updates a device's line. Off a
    terminal each update is printed as one line instead."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(), TextColumn("{task.fields[device]:<14}"), TextColumn("{task.description}"),
        TimeElapsedColumn(), console=console, disable=not console.is_terminal,
    ) as progress:  # fmt: skip
        tasks = {d: progress.add_task("waiting", device=d, total=None) for d in device_ids}

        def update(device: str, message: str) -> None:
            if device in tasks:
                progress.update(tasks[device], description=message)
            if not console.is_terminal:
                console.print(f"{device}: {message}", highlight=False)

        yield update


def print_status(rows: list[dict[str, Any]], json_path: Path | None) -> None:
    """Every device x artifact pair: measured, or failed / declined / refused with the reason."""
    console = Console()
    table = Table(title="edgerun lab bench")
    scored = any(r.get("fidelity") is not None for r in rows)
    for header in ("device", "artifact", "status", "shipped", "reason"):
        table.add_column(header)
    if scored:
        table.add_column("fidelity KL (export)")
    for r in rows:
        colour = "green" if r["status"] == "ok" else "red"
        sent = r["shipped_bytes"]
        shipped = (
            "—" if sent is None else ("had it" if sent == 0 else f"{sent / (1 << 20):.1f} MiB")
        )
        cells = [str(r["device"]), r["artifact"], f"[{colour}]{r['status']}[/]", shipped]
        cells.append(r["reason"] or "")
        table.add_row(*cells, *([fidelity_cell(r.get("fidelity"))] if scored else []))
    console.print(table)
    if json_path:
        console.print(
            f"results: {json_path}  (edgerun compare {json_path} --html report.html)",
            soft_wrap=True,
        )


def fidelity_cell(found: Any) -> str:
    """The `lab bench --fidelity` cell: the device's mean KL and the export's, and the verdict
    (the entry came from a device: anything not of the expected shape shows as such)."""
    if not isinstance(found, dict):
        return "—"
    if found.get("passed") is None:
        return f"[yellow]not scored[/]: {escape(str(found.get('error', '?'))[:200])}"
    device, export = found.get("device"), found.get("export")
    kl = device.get("mean_kl") if isinstance(device, dict) else None
    was = export.get("mean_kl") if isinstance(export, dict) else None
    text = f"{kl:.4g}" if is_number(kl) else "?"
    text += f" ({was:.4g})" if is_number(was) else " (?)"
    if found["passed"] is True:
        return f"[green]{text}[/]"
    return f"[red]{text} FAIL[/]: {escape('; '.join(map(str, found.get('reasons') or []))[:200])}"
