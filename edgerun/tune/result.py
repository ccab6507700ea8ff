"""A search outcome turned into what is written: the tuned profile and its provenance."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

from edgerun.device.profile import BackendPref, Profile
from edgerun.tune.search import OBJECTIVES, Outcome, Samples
from edgerun.tune.space import Space, threads_and_cpus


def describe_config(samples: Samples) -> str:
    """`onnx-int4@onnxruntime threads=1 spinning=False` for one measured configuration."""
    settings = " ".join(f"{k}={v}" for k, v in samples.config.items())
    return f"{samples.arm.name} {settings}".strip()


def measured_line(samples: Samples, objective: str) -> str:
    """`decode 25.4 tok/s (stdev 0.3, 25.0-25.9, n=6)`: the objective's median and spread."""
    from edgerun.bench.metrics import stats

    metric = OBJECTIVES[objective][0]
    s = stats(list(samples.values(metric)))
    if s is None:
        return f"{objective}: not measured ({samples.error or 'no repetition kept'})"
    units = {"tok_s": "tok/s", "per_token": "J/token"}
    unit = next((u for suffix, u in units.items() if metric.endswith(suffix)), "s")
    return (
        f"{objective} {s['median']:.4g} {unit} (stdev {s['stdev']:.2g},"
        f" {s['min']:.4g}-{s['max']:.4g}, n={s['n']})"
    )


def _machine() -> tuple[str, int | None]:
    from edgerun.device.machine import machine_facts

    facts = machine_facts()
    return facts.cpu_model, facts.physical_cores


def tuned_profile(base: Profile, space: Space, outcome: Outcome, objective: str) -> Profile:
    """`base` with the winner's format, backend and options first, its threads and affinity,
    and a [tuned] table naming this machine (see edgerun.device.detect) and summarising why."""
    win = outcome.winner
    config, arm = win.config, win.arm
    pref = base.backend(arm.backend) or BackendPref(arm.backend)
    options = {**pref.options, **arm.options(config)}
    backends = [dataclasses.replace(pref, options=options)]
    backends += [b for b in base.backends if b.name != arm.backend]
    cpu_model, cores = _machine()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    tuned = {
        "base": base.id,
        "date": date,
        "cpu_model": cpu_model,
        "physical_cores": cores,
        "objective": objective,
        "winner": describe_config(win),
        "winner_measured": measured_line(win, objective),
        "default": describe_config(outcome.default),
        "default_measured": measured_line(outcome.default, objective),
        "trials": outcome.trials,
        "configs_measured": len(outcome.measured),
        "exhaustive_configs": space.size(),
        "refused": len(outcome.refused),
        "stopped": outcome.stopped,
        "provenance": f"tuned-{base.id}.tune.json",
    }
    threads, affinity = threads_and_cpus(config, space.affinity)
    formats = [arm.format, *(f for f in base.preferred_formats if f != arm.format)]
    return dataclasses.replace(
        base,
        id=f"tuned-{base.id}",
        name=f"{base.name}, tuned on this machine",
        description=f"{base.id} with the settings edgerun tune measured fastest here ({date}).",
        threads=threads or base.threads,
        preferred_formats=[f for f in formats if "-" in f],
        backends=backends,
        affinity=affinity,
        tuned=tuned,
        source="",
    )


def provenance_of(
    space: Space, outcome: Outcome, objective: str, baseline: float, base: Profile
) -> dict[str, Any]:
    """Everything behind a tuned profile: space, trials, fidelity, measurements, versions."""
    from edgerun.bench.device import fingerprint, library_versions

    return {
        "schema": 1,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "base_profile": base.id,
        "objective": objective,
        "space": space.to_json(),
        "background_load_cores": baseline,
        "search": {
            "method": "single-setting screen (pruned), combination, close-call confirmation"
            " (edgerun.tune.search)",
            "trials": outcome.trials,
            "configs_measured": len(outcome.measured),
            "stopped": outcome.stopped,
            "seconds": outcome.seconds,
        },
        "default": outcome.default.to_json(),
        "winner": outcome.winner.to_json(),
        "measured": [s.to_json() for s in outcome.measured],
        "refused": outcome.refused,
        "pruned": outcome.pruned,
        "device": fingerprint(base.id),
        "versions": library_versions(),
    }
