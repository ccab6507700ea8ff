"""``python -m benchmarks.tune_study``: does `edgerun tune` find what an exhaustive sweep finds,
at a fraction of its trials, within its budget? (issue 25)

For each artifact (SmolLM2-135M onnx-int4 and gguf-q4_k_m, exported once under
benchmarks/work/tune/), or with ``--cases directory`` their export directory as one space (every
artifact and backend an arm, as `edgerun tune EXPORT_DIR` searches it), and each condition
(idle; a synthetic background load: one busy process pinned to CPU 0), in one run:

1. `edgerun tune`'s search (edgerun.tune.tune, nothing written) with its budget: its winner,
   trials, distinct configurations measured, refusals and wall time;
2. an exhaustive sweep of the same space, every configuration measured by the same bench-engine
   trials with the same repetitions, skipping configurations the same fidelity gate refuses;
3. the default, the tuned and the sweep's best configurations again, interleaved over three
   rounds (six where the tuned and the best are not the same computation, see 4; the tuned
   over the best is also given round by round, where slow drift cancels): the sweep's best is
   the maximum of many noisy trials (on a loaded machine identical configurations differed
   2.5x), so tuned vs best is quoted from this one interleaved stretch;
4. the ratios: the tuned configuration's decode tok/s over the sweep's best (as measured in the
   sweep, and interleaved); the search's trials (one model load and its repetitions each,
   re-measurements included), configurations and timed repetitions over the sweep's; and
   whether the tuned and the sweep's best configurations are the same computation (the same
   arm, equal once moot settings and graph levels with one optimized graph are normalised):
   then their ratio measures only the noise.

Results: benchmarks/results/tune-<time>.json; the machine's load average is recorded at the
start and end of every case (this machine may be shared).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from benchmarks import RESULTS, machine, work_dir

PY = sys.executable
HOG = "import os\nos.sched_setaffinity(0, {0})\nwhile True: pass"


def export(checkpoint: Path, out: Path, formats: list[str]) -> dict[str, Path]:
    """The study's artifacts, exported once (validated: the fidelity gate reads their KL)."""
    missing = [f for f in formats if not (out / f / "edgerun.json").is_file()]
    if missing:
        cmd = [
            PY,
            "-m",
            "edgerun",
            "export",
            str(checkpoint),
            "-f",
            ",".join(missing),
            "-o",
            str(out),
        ]
        subprocess.run(cmd, check=True)
    return {f: out / f for f in formats}


def _decode(samples: Any) -> dict[str, Any] | None:
    from edgerun.bench.metrics import stats

    return stats(list(samples.values("decode_tok_s")))


def sweep(space: Any, measure: Any, gate: Any, reps: int) -> list[dict[str, Any]]:
    """Every eligible configuration of `space`, measured with `reps` repetitions."""
    from edgerun.tune.search import Samples

    rows = []
    for arm in space.arms:
        for config in arm.every():
            first = arm is space.arms[0]
            if not first or arm.output_key(config) != arm.output_key(arm.default()):
                reason = gate(arm, config)
                if reason is not None:
                    rows.append({"arm": arm.name, "config": config, "refused": reason})
                    continue
            sample = Samples(arm, config)
            try:
                sample.reps, sample.discarded = measure(arm, config, reps)
            except Exception as exc:  # a configuration the backend refuses is a result
                sample.error = str(exc)
            rows.append({"arm": arm.name, "config": config, "decode": _decode(sample),
                         "values": sample.values("decode_tok_s"), "reps": len(sample.reps),
                         "discarded_busy": sample.discarded, "error": sample.error})  # fmt: skip
    return rows


def computations(rows: list[dict[str, Any]], space: Any) -> list[dict[str, Any]]:
    """The sweep's measured rows pooled by distinct computation (the arm and its normalised
    settings). Nominal configurations that run alike (a moot setting, two levels with one
    optimized graph, flash attention that a quantized KV cache turns on) are one computation
    measured more than once: ranking each draw alone crowns the luckiest (the session-14 idle
    gguf sweep read one computation at 112.4 and 140.6 tok/s and called the 140.6 its best)."""
    from edgerun.bench.metrics import stats

    arms = {arm.name: arm for arm in space.arms}
    pooled: dict[str, dict[str, Any]] = {}
    for row in rows:
        if not row.get("values"):
            continue
        config = arms[row["arm"]].normalise(row["config"])
        key = json.dumps([row["arm"], config], sort_keys=True, default=str)
        group = pooled.setdefault(
            key, {"arm": row["arm"], "config": config, "values": [], "nominal": []}
        )
        group["values"] += row["values"]
        group["nominal"].append(row["config"])
    for group in pooled.values():
        group["decode"] = stats(list(group["values"]))
    return list(pooled.values())


def head_to_head(
    space: Any, measure: Any, picks: dict[str, tuple[str, dict[str, Any]]], rounds: int, reps: int
) -> dict[str, Any]:
    """The default, the tuned and the sweep's best configurations measured again, interleaved
    (round by round, one trial each, the order rotated every round), so their ratios come from
    one stretch of time and the sweep's best is not a lucky draw among many (the winner's
    curse)."""
    from edgerun.bench.metrics import stats

    arms = {arm.name: arm for arm in space.arms}
    values: dict[str, list[float]] = {name: [] for name in picks}
    per_round: list[float | None] = []  # tuned over best within each round: drift cancels
    names = list(picks)
    for turn in range(rounds):
        medians = {}
        # each round starts one place later, so every configuration runs in every position as
        # often (at f8fad3c identical computations, always run second and third, read 0.92-0.97
        # of each other; rotated, at ceeedb5, 0.948 and 0.957: noise, not the position)
        shift = turn % len(names)
        for name in names[shift:] + names[:shift]:
            arm, config = picks[name]
            kept, _discarded = measure(arms[arm], config, reps)
            got = [r["decode_tok_s"] for r in kept if r.get("decode_tok_s")]
            values[name] += got
            medians[name] = (stats(got) or {}).get("median")
        tuned, best = medians["tuned"], medians["sweep_best"]
        per_round.append(tuned / best if tuned and best else None)
    medians = {name: (stats(list(v)) or {}).get("median") for name, v in values.items()}
    best, tuned, default = medians["sweep_best"], medians["tuned"], medians["default"]
    return {
        "rounds": rounds,
        "decode": {name: stats(list(v)) for name, v in values.items()},
        "tuned_over_best": tuned / best if tuned and best else None,
        "tuned_over_default": tuned / default if tuned and default else None,
        "tuned_over_best_per_round": per_round,
    }


def one_case(artifact: Path, budget_s: float, reps: int, tokens: tuple[int, int]) -> dict[str, Any]:
    """Tune, then sweep, one artifact under the current condition."""
    import edgerun.tune
    from edgerun.device.resolve import resolve_profile
    from edgerun.tune import _bench_trials, _plan
    from edgerun.tune.fidelity import FidelityGate
    from edgerun.tune.result import describe_config

    base = resolve_profile(None).profile
    assert base is not None
    started = time.monotonic()
    space = _plan(artifact, base, base.threads)  # the graph-level check and the kernel probe
    plan_wall = time.monotonic() - started
    measure, baseline = _bench_trials(space, base, *tokens)
    gate = FidelityGate(space.arms[0].mean_kl, space.arms[0])
    load_start = os.getloadavg()
    started = time.monotonic()
    result = edgerun.tune.tune(artifact, base.id, budget_s=budget_s, write=False, space=space,
                               measure=measure, fidelity=gate,
                               progress=lambda m: click.echo(f"  tune: {m}", err=True))  # fmt: skip
    tune_wall = time.monotonic() - started
    out = result.outcome
    click.echo(f"  tuned in {tune_wall:.0f} s: {describe_config(out.winner)}; sweeping", err=True)
    started = time.monotonic()
    rows = sweep(space, measure, gate, reps)
    sweep_wall = time.monotonic() - started
    measured = [r for r in rows if r.get("decode")]
    distinct = computations(rows, space)
    best = max(distinct, key=lambda r: r["decode"]["median"])
    arms = {arm.name: arm for arm in space.arms}

    def row_of(config: dict[str, Any], arm: str) -> dict[str, Any]:
        # every rep of a configuration can be discarded as disturbed (the busy-machine check):
        # then the sweep has no number for it, and its ratios are None rather than a crash
        config = arms[arm].normalise(config)
        found = [r for r in distinct if r["config"] == config and r["arm"] == arm]
        return found[0] if found else {"arm": arm, "config": config, "decode": None}

    tuned = row_of(out.winner.config, out.winner.arm.name)
    default = row_of(out.default.config, out.default.arm.name)
    picks = {"default": (default["arm"], default["config"]),
             "tuned": (tuned["arm"], tuned["config"]),
             "sweep_best": (best["arm"], best["config"])}  # fmt: skip
    # the same arm at settings that normalise alike (moot ones, levels with one optimized
    # graph, forced ones) run the same computation: their ratio is the measurement's noise,
    # nothing else; where they differ, twice the rounds
    same_computation = tuned["arm"] == best["arm"] and tuned["config"] == best["config"]
    rounds = 3 if same_computation else 6
    click.echo(
        f"  head to head: default, tuned, sweep's best interleaved, {rounds} rounds", err=True
    )
    interleaved = head_to_head(space, measure, picks, rounds=rounds, reps=reps)

    def ratio(a: dict[str, Any], b: dict[str, Any]) -> float | None:
        return (
            a["decode"]["median"] / b["decode"]["median"] if a["decode"] and b["decode"] else None
        )

    return {
        "artifact": str(artifact),
        "background_load_cores": baseline,
        "load_avg_start": load_start,
        "load_avg_end": os.getloadavg(),
        "tune": {
            "wall_s": tune_wall,
            "plan_s": plan_wall,
            "trials": out.trials,
            "configs": len(out.measured),
            "stopped": out.stopped,
            "winner": out.winner.to_json(),
            "default": out.default.to_json(),
            "refused": out.refused,
            "pruned": out.pruned,
            "reps": sum(len(s.reps) for s in out.measured),
        },  # fmt: skip
        "sweep": {
            "configs": len(measured),
            "distinct": len(distinct),
            "space": space.size(),
            "wall_s": sweep_wall,
            "reps": sum(r["reps"] for r in rows if "reps" in r),
            "rows": rows,
        },  # fmt: skip
        "sweep_best": best,
        "same_computation": same_computation,
        "ratios": {
            "tuned_over_best": ratio(tuned, best),
            "tuned_over_default": ratio(tuned, default),
            "search_configs_over_sweep": len(out.measured) / max(len(measured), 1),
            "search_trials_over_sweep": out.trials / max(len(measured), 1),
            "search_trials_over_distinct": out.trials / max(len(distinct), 1),
            "search_reps_over_sweep": sum(len(s.reps) for s in out.measured)
            / max(sum(r["reps"] for r in rows if "reps" in r), 1),
        },
        "sweep_tuned": tuned,
        "sweep_default": default,
        "head_to_head": interleaved,
    }


@click.command()
@click.option(
    "--model", default="smollm2-135m", show_default=True, help="What `edgerun pull` accepts."
)
@click.option("--formats", default="onnx-int4,gguf-q4_k_m", show_default=True)
@click.option("--budget", default=600.0, show_default=True, help="Tune budget per case, seconds.")
@click.option("--reps", default=3, show_default=True, help="Sweep repetitions per configuration.")
@click.option("--prompt-tokens", default=32, show_default=True)
@click.option("--gen-tokens", default=48, show_default=True)
@click.option("--conditions", default="idle,loaded", show_default=True)
@click.option("--cases", default="artifacts", show_default=True,
              help="artifacts: each format alone; directory: the export directory as a user "
              "tunes it (every artifact an arm: which artifact is searched too); or both.")  # fmt: skip
@click.option(
    "--from", "exported", type=click.Path(path_type=Path), help="An export directory to use."
)
@click.option(
    "--out", type=click.Path(path_type=Path), help="Results file (default: benchmarks/results/)."
)
def main(model: str, formats: str, budget: float, reps: int, prompt_tokens: int,
         gen_tokens: int, conditions: str, cases: str, exported: Path | None,
         out: Path | None) -> None:  # fmt: skip
    """Tune vs an exhaustive sweep, per artifact and condition; results JSON."""
    if exported is not None:
        artifacts = {f: exported / f for f in formats.split(",")}
    else:
        from edgerun.sources.resolve import resolve

        checkpoint = resolve(model, progress=False).path
        exported = work_dir() / "tune" / model
        artifacts = export(Path(checkpoint), exported, formats.split(","))
    wanted = set(cases.replace("both", "artifacts,directory").split(","))
    if not wanted <= {"artifacts", "directory"}:
        raise click.BadParameter(f"unknown case in '{cases}'", param_hint="--cases")
    if "artifacts" not in wanted:
        artifacts = {}
    if "directory" in wanted:  # the space of every artifact the directory holds, as tune sees it
        artifacts["directory"] = exported
    results: dict[str, Any] = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine.describe(),
        "model": model, "budget_s": budget, "sweep_reps": reps,
        "workload": {"prompt_tokens": prompt_tokens, "gen_tokens": gen_tokens},
        "cases": [],
    }  # fmt: skip
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: the load process is killed
    path = out or RESULTS / f"tune-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    for condition in conditions.split(","):
        hog = subprocess.Popen([PY, "-c", HOG]) if condition == "loaded" else None
        try:
            for fmt, artifact in artifacts.items():
                click.echo(f"{fmt} ({condition})", err=True)
                case = one_case(artifact, budget, reps, (prompt_tokens, gen_tokens))
                results["cases"].append({"format": fmt, "condition": condition, **case})
                path.write_text(json.dumps(results, indent=1, default=str))  # nothing lost
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
    click.echo(summary(results))
    click.echo(f"results: {path}")


def summary(results: dict[str, Any]) -> str:
    """The Markdown table of the study."""
    lines = [
        "| artifact | condition | default tok/s | tuned tok/s | sweep best tok/s | tuned/best |"
        " tuned/best interleaved | same computation | trials (tune/sweep) | configs"
        " | sweep's distinct computations | tune wall (planning included) | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(d: dict[str, Any] | None) -> str:
        return f"{d['median']:.1f} ({d['min']:.1f}-{d['max']:.1f})" if d else "- (all reps busy)"

    for c in results["cases"]:
        d, t, b = (c[k]["decode"] for k in ("sweep_default", "sweep_tuned", "sweep_best"))
        lines.append(
            f"| {c['format']} | {c['condition']} | {cell(d)} | {cell(t)} | {b['median']:.1f}"
            f" | {c['ratios']['tuned_over_best'] or 0:.3f}"
            f" | {c['head_to_head']['tuned_over_best'] or 0:.3f}"
            f" | {'yes' if c.get('same_computation') else 'no'}"
            f" | {c['tune']['trials']}/{c['sweep']['configs']}"
            f" | {c['tune']['configs']}/{c['sweep']['configs']}"
            f" | {c['sweep'].get('distinct', '-')}"
            f" | {c['tune']['wall_s'] + c['tune'].get('plan_s', 0.0):.0f} s"
            f" | {c['load_avg_start'][0]:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
