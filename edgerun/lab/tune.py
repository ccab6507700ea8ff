"""`lab tune`: `edgerun tune` on every chosen device at once, over the lab transport.

The host ships the artifact (edgerun.lab.ship, content-addressed and verified on arrival), then
each device runs the same search as `edgerun tune` on its stored copy (``tune_on_device``),
writes the tuned profile into its own ``$EDGERUN_HOME/profiles/`` (so `run`, `serve` and `bench`
there use it) and sends it back: the host checks it (a profile that parses, ids that match,
bounded) and writes ``OUT/<device>/tuned-<profile>.toml`` and its provenance. Liveness, stall
and Ctrl-C are the lab bench's (edgerun.lab.orchestrate.Lab); a device that leaves is recorded
as failed, not retried.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from edgerun.core.errors import EdgerunError
from edgerun.lab.orchestrate import HINT, Cancelled, Lab, SchedulerLost
from edgerun.lab.results import ResultsFile

MAX_TOML_BYTES = 64 << 10


def tune_on_device(
    device_id: str, run_id: str, artifact_id: str, options: dict[str, Any]
) -> dict[str, Any]:
    """On the device: tune the stored artifact `artifact_id` (options: profile, None for the
    device's advertised one; budget_s, objective, power, prompt_tokens, gen_tokens), write the
    tuned profile here, and return {"profile_id", "toml", "provenance"}. Every trial reports
    progress and checks the cancel flag (edgerun.lab.remote)."""
    import edgerun.tune
    from edgerun.lab import store
    from edgerun.lab.device import advertise
    from edgerun.lab.remote import _step

    path = store.artifact_path(artifact_id)
    if path is None:
        raise EdgerunError("the artifact left this device's store before its tune", store.HINT)
    result = edgerun.tune.tune(
        Path(str(path)),
        options.get("profile") or advertise(device_id)["profile"],  # as lab bench does
        budget_s=float(options["budget_s"]),
        objective=str(options["objective"]),
        power=str(options["power"]),
        prompt_tokens=int(options["prompt_tokens"]),
        gen_tokens=int(options["gen_tokens"]),
        progress=_step(device_id, run_id),
    )
    assert result.profile_path is not None  # written: write=True
    return {
        "profile_id": result.profile_id,
        "toml": result.profile_path.read_text(),
        "provenance": result.provenance,
    }


def check_tuned(answer: Any, device_id: str) -> dict[str, Any]:
    """A device's tune answer, checked: a TOML that parses as the tuned profile it names."""
    from edgerun.device.profile import parse_profile

    what = f"device {device_id}'s tuned profile"
    if not isinstance(answer, dict) or set(answer) != {"profile_id", "toml", "provenance"}:
        raise EdgerunError(f"{what} is not an answer of lab tune", HINT)
    toml, profile_id = answer["toml"], answer["profile_id"]
    if not isinstance(toml, str) or len(toml.encode()) > MAX_TOML_BYTES:
        raise EdgerunError(f"{what} is not a TOML text under {MAX_TOML_BYTES} bytes", HINT)
    profile = parse_profile(toml, what)
    if profile.id != profile_id or not str(profile_id).startswith("tuned-"):
        raise EdgerunError(f"{what} names {str(profile_id)[:60]!r}, not a tuned profile", HINT)
    if not isinstance(answer["provenance"], dict):
        raise EdgerunError(f"{what} has no provenance object", HINT)
    return {**answer, "profile": profile}


def slug(name: str) -> str:
    """A file name from a device's or profile's id: never a path, never hidden."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip(".-")[:64] or "device"


class TunedProfiles(ResultsFile):
    """Where the lab's tuned profiles go: ``OUT/<device>/<profile>.toml`` and its provenance
    for each device that answered, and one status row per device."""

    def __init__(self, out: Path) -> None:
        super().__init__(None)
        self.out = Path(out)
        self.rows: list[dict[str, Any]] = []

    def add(self, run: dict[str, Any]) -> None:
        """Write one device's profile (when it has one) and keep its status row."""
        from edgerun.core.home import atomic_write_json, atomic_write_text

        tuned = run.pop("tuned", None)
        if tuned is not None:
            folder = self.out / slug(run["device"])
            folder.mkdir(parents=True, exist_ok=True)
            name = slug(tuned["profile_id"])
            run["file"] = str(folder / f"{name}.toml")
            atomic_write_text(folder / f"{name}.toml", tuned["toml"])
            atomic_write_json(folder / f"{name}.tune.json", tuned["provenance"])
        with self.lock:
            self.rows.append(run)


class LabTune(Lab):
    """`lab tune` over `client`'s devices: spec.artifacts holds the one artifact, spec.options
    tune_on_device's options."""

    def device_job(self, device: dict[str, Any], results: ResultsFile) -> dict[str, Any]:
        """Ship, tune and collect on one device; its row (and profile) goes to `results`."""
        from edgerun.lab.guard import unwrap

        dev_id, address = device["id"], device["address"]
        self.attempts[dev_id] = 1
        self.seen[dev_id] = time.monotonic()
        row: dict[str, Any] = {"device": dev_id, "status": "ok", "reason": None}
        try:
            answer = unwrap(self._tune(dev_id, address), f"device {dev_id}'s tuned profile")
            row["tuned"] = check_tuned(answer, dev_id)
            why = row["tuned"].pop("profile").tuned
            row["winner"] = why.get("winner")
            row["measured"] = f"{why.get('default_measured')} -> {why.get('winner_measured')}"
        except Cancelled as exc:
            row.update(status="cancelled", reason=exc.message)
        except SchedulerLost as exc:
            self.scheduler_lost = exc
            row.update(status="failed", reason=exc.message)
        except Exception as exc:  # a tune error on the device, a stall, a lost device
            reason = (
                exc.message if isinstance(exc, EdgerunError) else f"{type(exc).__name__}: {exc}"
            )
            row.update(status="failed", reason=reason)
        results.add(row)
        self.progress(dev_id, f"done: {row['status']}")
        return row

    def _tune(self, dev_id: str, address: str) -> Any:
        from edgerun.lab.remote import call
        from edgerun.lab.ship import ship

        (art,) = self.spec.artifacts
        self.progress(dev_id, f"ship {art.info['name']}")
        ship(self.client, address, art, lambda f: self.wait(dev_id, address, f))
        self.progress(dev_id, "tune")
        future = self.client.submit(
            call, tune_on_device, dev_id, self.run_key(dev_id), art.artifact_id,
            self.spec.options, workers=[address], resources={"edgerun-device": 1}, pure=False,
        )  # fmt: skip
        return self.wait(dev_id, address, future)
