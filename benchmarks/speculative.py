"""Prompt-lookup speculative decoding against plain decoding, on the same loaded model, greedy:
decode tok/s, whether the tokens are identical, and the draft acceptance rate, per task.

    python -m benchmarks.speculative out/onnx-int4 out/gguf-q4_k_m --reps 5

Tasks (chat prompts through the model's template): "rewrite" and "extract" hand the model a
text of >= 300 tokens (benchmarks/prompt.txt) to copy out with small changes, the input-grounded
work prompt lookup is for; "open" asks for new text with no source to copy from. Each artifact is
loaded once; per round every task runs plain (speculative="off") and speculative ("on"), in
alternating order, after one unmeasured warm-up of each. Decode tok/s is
edgerun's own (tokens after the first over the time after the first); the summary gives medians
and the ratio of the medians. Results go to benchmarks/results/speculative-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks import RESULTS, ROOT
from benchmarks.machine import describe

MODES = ("off", "on")  # plain; speculative (the shipped "auto" is "off" on the CPU backends)
TEXT = (ROOT / "prompt.txt").read_text().strip()
TASKS = {
    "rewrite": "Rewrite the following text in the present tense, changing nothing else:\n\n" + TEXT,
    "extract": "Copy out every sentence of the following text that mentions the sea or a"
    " ship, word for word, one per line:\n\n" + TEXT,
    "open": "Write a long story about a robot who learns to paint, with many characters.",
}


def one_run(model: Any, ids: list[int], gen: int, mode: str) -> dict[str, Any]:
    """One greedy generation; its tokens, decode speed and draft counts."""
    tokens = [c.token_id for c in model.generate(ids, max_tokens=gen, speculative=mode)]
    s = model.last_stats
    return {
        "mode": mode,
        "tokens": tokens,
        "generated": s.generated_tokens,
        "decode_tok_s": s.decode_tok_s,
        "ttft_s": s.ttft_s,
        "draft_tokens": s.draft_tokens,
        "accepted_tokens": s.accepted_tokens,
        "verify_passes": s.verify_passes,
    }


def run_artifact(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Every task on one artifact: warm-up, then rounds of plain and speculative, interleaved."""
    import edgerun

    out: dict[str, Any] = {"artifact": str(path), "tasks": {}}
    with edgerun.load(path, args.profile, threads=args.threads) as model:
        out["info"] = {k: model.info.to_json()[k] for k in ("backend", "format", "threads")}
        prompts = {
            t: model.tokenizer.encode_chat([{"role": "user", "content": p}])
            for t, p in TASKS.items()
        }
        runs: dict[str, list[dict[str, Any]]] = {t: [] for t in TASKS}
        for ids in prompts.values():  # warm-up
            for mode in MODES:
                one_run(model, ids, args.gen_tokens, mode)
        for rep in range(args.reps):
            for task, ids in prompts.items():
                order = MODES if rep % 2 == 0 else MODES[::-1]
                for mode in order:
                    time.sleep(0.2)  # let the previous run's thread pool stop spinning
                    runs[task].append(one_run(model, ids, args.gen_tokens, mode))
        for task, rows in runs.items():
            out["tasks"][task] = summarize(rows, len(prompts[task]))
    return out


def summarize(rows: list[dict[str, Any]], prompt_tokens: int) -> dict[str, Any]:
    """Per mode: median decode tok/s, its ratio to plain's median, whether every run's tokens
    equal plain decoding's, and the draft acceptance rate."""
    plain = [r for r in rows if r["mode"] == "off"]

    def median(rs: list[dict[str, Any]]) -> float:
        return statistics.median(r["decode_tok_s"] for r in rs if r["decode_tok_s"])

    out: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "generated_tokens": plain[0]["generated"],
        "plain_runs_identical": all(r["tokens"] == plain[0]["tokens"] for r in plain),
    }
    for mode in MODES:
        runs = [r for r in rows if r["mode"] == mode]
        drafted = sum(r["draft_tokens"] for r in runs)
        accepted = sum(r["accepted_tokens"] for r in runs)
        out[mode] = {
            "decode_tok_s": [round(r["decode_tok_s"], 2) for r in runs],
            "median": round(median(runs), 2),
            "speedup": round(median(runs) / median(plain), 3),
            "identical_tokens": all(r["tokens"] == plain[0]["tokens"] for r in runs),
            "acceptance_rate": round(accepted / drafted, 3) if drafted else None,
            "drafts_per_run": drafted / len(runs),
            "verify_passes_per_run": sum(r["verify_passes"] for r in runs) / len(runs),
        }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("artifacts", nargs="+", type=Path)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--gen-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    load1 = os.getloadavg()[0]
    results = [run_artifact(path, args) for path in args.artifacts]
    for r in results:
        for task, t in r["tasks"].items():
            for mode in MODES:
                m = t[mode]
                print(
                    f"{r['info']['format']:<12} {task:<8} {mode:<4} {m['median']:6.1f} tok/s"
                    f"  x{m['speedup']:.2f}  identical={m['identical_tokens']}"
                    f"  accepted={m['acceptance_rate']}"
                )
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    doc = {
        "benchmark": "speculative",
        "created": stamp,
        "workload": {"reps": args.reps, "gen_tokens": args.gen_tokens, "threads": args.threads,
                     "greedy": True, "tasks": {t: p[:120] for t, p in TASKS.items()}},
        "load_average_1m_before": load1,
        "busy": load1 > (os.cpu_count() or 1) / 2,
        "machine": describe(),
        "results": results,
    }  # fmt: skip
    out = args.out or RESULTS / f"speculative-{stamp}.json"
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
