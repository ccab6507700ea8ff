"""How far a several-token pass's logits drift from one-token steps (issue 27: speculative
decoding with greedy output identical to plain decoding).

    .venv/bin/python -m benchmarks.verify_drift ART [ART ...] [--gen 128] [--widths 1,2,4,8]

For each artifact and input-grounded task of benchmarks.speculative: the prompt is prefilled,
`gen` tokens are decoded greedily one at a time (the rows plain decoding picks from), then the
same tokens are fed again from the prompt in passes of `width` (Backend.verify: every draft
accepted, so later passes also read KV written by earlier batched passes, as speculation does).
Width 1 is the control (one-token passes through verify: 0.0 when the rows align). Per
width: the largest and 99th-percentile |logit difference| against the one-token rows, how
many picks would flip, and how many of plain decoding's rows have a top-2 margin below twice the
largest difference (the rows a margin guard must recompute). Results JSON in results/.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from typing import Any

import numpy as np

from benchmarks import RESULTS
from benchmarks.machine import describe
from benchmarks.speculative import TASKS


def margins(rows: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 logit of each row."""
    top = np.partition(rows, -2, axis=-1)[:, -2:]
    return top[:, 1] - top[:, 0]


def drift(backend: Any, prompt: list[int], gen: int, widths: list[int]) -> dict[str, Any]:
    total = len(prompt) + gen + 16
    rows = [np.array(backend.prefill(prompt, total), np.float32)]
    tokens: list[int] = []
    for _ in range(gen):
        tokens.append(int(rows[-1].argmax()))
        rows.append(np.array(backend.decode(tokens[-1]), np.float32))
    plain = np.stack(rows[1:])  # the rows after each generated token
    margin = margins(plain)
    out: dict[str, Any] = {"tokens": gen, "plain_margin_min": float(margin.min())}
    for width in widths:
        backend.prefill(prompt, total)
        batched = []
        for start in range(0, gen, width):
            batched += [
                np.array(r, np.float32) for r in backend.verify(tokens[start : start + width])
            ]
        passes = np.stack(batched)
        diff = np.abs(passes - plain).max(axis=-1)
        flips = int((passes.argmax(-1) != plain.argmax(-1)).sum())
        out[f"width_{width}"] = {
            "max_abs_diff": float(diff.max()),
            "p99_abs_diff": float(np.percentile(diff, 99)),
            "median_abs_diff": float(np.median(diff)),
            "argmax_flips": flips,
            "rows_below_2x_max": int((margin < 2 * diff.max()).sum()),
        }
    return out


def main(argv: list[str] | None = None) -> None:
    import edgerun

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifacts", nargs="+")
    parser.add_argument("--gen", type=int, default=128)
    parser.add_argument("--widths", default="1,2,4,8")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    widths = [int(w) for w in args.widths.split(",")]
    results: dict[str, Any] = {
        "benchmark": "verify_drift",
        "created": datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
        "machine": describe(),
        "artifacts": [],
    }
    for artifact in args.artifacts:
        with edgerun.load(artifact, threads=args.threads, prompt_cache_mb=0) as model:
            backend = model._backend
            assert backend is not None and backend.can_verify
            entry: dict[str, Any] = {"artifact": artifact, "backend": model.info.backend}
            for task in ("rewrite", "extract"):
                prompt = model.tokenizer.encode_chat([{"role": "user", "content": TASKS[task]}])
                entry[task] = drift(backend, prompt, args.gen, widths)
                print(artifact, task, json.dumps(entry[task]))
            results["artifacts"].append(entry)
    path = RESULTS / f"verify-drift-{results['created']}.json"
    path.write_text(json.dumps(results, indent=1))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
