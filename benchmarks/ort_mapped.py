"""``python -m benchmarks.ort_mapped ARTIFACT``: ONNX Runtime's packed weights on the heap (the
ordinary load) against mapped from the per-machine cache (the `map_prepacked` option,
edgerun.backends.ort_prepacked), on one ONNX artifact (issue 20's runtime memory).

Each measurement is a fresh process (a process that freed memory before would reuse it):

1. ``ordinary``: load; anonymous memory the load added, RSS split into anonymous and file-backed
   pages, load seconds, greedy decode tok/s, the logits of a fixed prompt;
2. ``mapped-first``: the first load with map_prepacked, which writes the cache (seconds, bytes);
3. ``mapped``: a second load from the cache, the same numbers as 1, logits compared with 1's;
4. ``shared``: two processes holding the mapped model at once: their proportional set sizes
   (the kernel splits shared file pages between the processes mapping them).

The cache goes to a scratch EDGERUN_HOME (removed at the end). Results:
benchmarks/results/ort-mapped-<time>.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from benchmarks import RESULTS, machine

PROMPT = "The history of the city begins with a small settlement on the river, where"
MIB = 2**20


def _rollup() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "kB":
            fields[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return fields


def child(artifact: str, mapped: bool, hold_s: float) -> dict[str, Any]:
    """One load and a short greedy decode in this process; JSON-able numbers."""
    import numpy as np

    import edgerun
    from edgerun.device.memory import anonymous_bytes

    before = anonymous_bytes()
    started = time.perf_counter()
    options = {"map_prepacked": True} if mapped else {}
    model = edgerun.load(artifact, backend="onnxruntime", context=512, **options)
    load_s = time.perf_counter() - started
    added = anonymous_bytes() - before
    ids = model.tokenizer.encode(PROMPT)
    started = time.perf_counter()
    tokens, logits = model.decode_logits(ids, 32)
    decode = 32 / (time.perf_counter() - started)
    roll = _rollup()
    out = {
        "load_s": round(load_s, 3),
        "anonymous_added_mib": round(added / MIB, 1),
        "rss_mib": round(roll["Rss"] / MIB, 1),
        "rss_anon_mib": round(roll["Anonymous"] / MIB, 1),
        "rss_file_mib": round((roll["Rss"] - roll["Anonymous"]) / MIB, 1),
        "pss_mib": round(roll.get("Pss", 0) / MIB, 1),
        "pss_file_mib": round(roll.get("Pss_File", 0) / MIB, 1),
        "decode_tok_s_incl_prefill": round(decode, 2),
        "tokens": [int(t) for t in tokens],
        "logits_sha": hashlib.sha256(np.ascontiguousarray(logits)).hexdigest(),
        "warnings": list(model.info.warnings),
        "loaded_bytes_mib": round((model._backend.loaded_bytes or 0) / MIB, 1),
    }
    if hold_s:
        print(json.dumps(out), flush=True)
        time.sleep(hold_s)  # held while the sibling measures
    model.close()
    return out


def _run(artifact: Path, home: Path, mapped: bool) -> dict[str, Any]:
    env = {**os.environ, "EDGERUN_HOME": str(home)}
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.ort_mapped",
        "--child",
        "mapped" if mapped else "plain",
    ]
    done = subprocess.run(
        [*cmd, str(artifact)], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@click.command()
@click.argument("artifact", type=click.Path(exists=True, path_type=Path))
@click.option("--child", "child_mode", type=click.Choice(["plain", "mapped", "hold"]), hidden=True)
@click.option("--out", type=click.Path(path_type=Path), help="Results file.")
def main(artifact: Path, child_mode: str | None, out: Path | None) -> None:
    """Heap vs mapped packed weights of one ONNX artifact; results JSON."""
    if child_mode:
        found = child(str(artifact), child_mode != "plain", 20.0 if child_mode == "hold" else 0.0)
        print(json.dumps(found), flush=True)
        return
    with tempfile.TemporaryDirectory(prefix="ort-mapped-") as scratch:
        home = Path(scratch)
        results: dict[str, Any] = {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine.describe(),
            "artifact": str(artifact),
            "file_mib": round(sum(
                p.stat().st_size for p in artifact.iterdir() if "onnx" in p.name
            ) / MIB, 1),
        }  # fmt: skip
        results["ordinary"] = _run(artifact, home, False)
        started = time.perf_counter()
        results["mapped_first"] = _run(artifact, home, True)
        results["mapped_first"]["wall_s"] = round(time.perf_counter() - started, 1)
        results["cache_mib"] = round(_dir_bytes(home / "ort-prepacked") / MIB, 1)
        results["mapped"] = _run(artifact, home, True)
        results["same_logits"] = (
            results["mapped"]["logits_sha"] == results["ordinary"]["logits_sha"]
            and results["mapped"]["tokens"] == results["ordinary"]["tokens"]
        )
        env = {**os.environ, "EDGERUN_HOME": str(home)}
        cmd = [sys.executable, "-m", "benchmarks.ort_mapped", "--child", "hold", str(artifact)]
        first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
        assert first.stdout is not None
        alone = json.loads(first.stdout.readline())
        second = _run(artifact, home, True)  # measured while the first holds the model
        first.wait(timeout=300)
        results["shared"] = {"first_alone_pss_mib": alone["pss_mib"], "second": second}
    path = out or RESULTS / f"ort-mapped-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(results, indent=1))
    keys = ("load_s", "anonymous_added_mib", "rss_anon_mib", "rss_file_mib", "pss_mib")
    for name in ("ordinary", "mapped_first", "mapped"):
        click.echo(f"{name:13s} " + "  ".join(f"{k} {results[name][k]}" for k in keys))
    click.echo(f"cache {results['cache_mib']} MiB; same logits: {results['same_logits']}")
    click.echo(f"results: {path}")


if __name__ == "__main__":
    main()
