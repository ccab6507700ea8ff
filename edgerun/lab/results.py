"""Lab results: one file in the existing bench schema (edgerun.bench.results), one run per
device, rewritten atomically as each device finishes so nothing measured is lost.

A device x artifact pair that was not measured keeps its row in the file: an artifact entry
with an empty summary (so `edgerun compare` shows no numbers for it) and a ``lab`` block
``{"status": "failed" | "declined" | "refused" | "cancelled", "reason"}``. Every run has a
``lab`` block too: device id, attempts, bytes shipped per artifact, status and reason.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from edgerun.bench.results import SCHEMA, SCHEMA_VERSION, new_run, read_results
from edgerun.core.errors import EdgerunError
from edgerun.core.home import atomic_write_json


def unmeasured(info: dict[str, Any], status: str, reason: str) -> dict[str, Any]:
    """The artifact entry of a device x artifact pair that has no measurement, and why."""
    return {
        **info,
        "reps": [],
        "summary": {"by_prompt": {}},
        "lab": {"status": status, "reason": reason},
    }


def failed_run(
    device: dict[str, Any],
    infos: list[dict[str, Any]],
    workload: dict[str, Any],
    status: str,
    reason: str,
) -> dict[str, Any]:
    """A run for a device where nothing was measured: every artifact has `status`."""
    body = {
        "workload": workload,
        "power": None,
        "order": [],
        "artifacts": [unmeasured(i, status, reason) for i in infos],
    }
    libraries = device.get("installed") or device["libraries"]  # not the staged skew versions
    return new_run(body, device.get("fingerprint") or {"name": device["id"]}, libraries)


class ResultsFile:
    """The lab's results file, rewritten (atomically) with every run added; thread-safe."""

    def __init__(self, path: Path | None, append: bool = False) -> None:
        self.path = Path(path) if path else None
        self.lock = threading.Lock()
        self.data: dict[str, Any] = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "runs": []}
        if self.path is not None and self.path.exists():
            if not append:
                raise EdgerunError(
                    f"{self.path} already exists",
                    "pass --append to add this lab run to it, or choose a new name",
                )
            self.data = read_results(self.path)

    def add(self, run: dict[str, Any]) -> None:
        """Add one device's run and write the file."""
        with self.lock:
            self.data["runs"].append(run)
            if self.path is not None:
                atomic_write_json(self.path, self.data)

    def status_rows(self, first_run: int = 0) -> list[dict[str, Any]]:
        """One row per device x artifact of the runs from `first_run` on: device, artifact,
        status ("ok" when measured) and reason."""
        out = []
        for run in self.data["runs"][first_run:]:
            for art in run["artifacts"]:
                lab = art.get("lab") or {"status": "ok", "reason": None}
                out.append(
                    {
                        "device": (run.get("device") or {}).get("name"),
                        "artifact": art["name"],
                        "status": lab["status"],
                        "reason": lab["reason"],
                        "shipped_bytes": (run.get("lab") or {}).get("shipped", {}).get(art["name"]),
                        "fidelity": art.get("fidelity"),
                    }
                )
        return out
