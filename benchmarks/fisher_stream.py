"""``python -m benchmarks.fisher_stream CHECKPOINT``: q4-mixed's Fisher sensitivity on the whole
model against the same estimate layer by layer (exporters/onnx/fisher_stream.py), each in its own
measured child process: peak RSS, wall time, and whether the two rank the groups alike (the plan
q4-mixed takes is the ranking's prefix that fits the budget, so equal rankings make equal plans).
Results go to benchmarks/results/fisher-stream-<time>.json.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import click

from benchmarks import RESULTS, machine, work_dir
from benchmarks.proc import run_measured

BLOCK, SYMMETRIC = 32, False  # q4-mixed's int4 blocks (asymmetric)


def sensitivities(checkpoint: Path, how: str, out: Path, windows_n: int | None = None) -> None:
    """Child side: write {group key: sensitivity} of `how` ("whole" or "layers") to `out`, over
    the first `windows_n` calibration windows (None: all of them)."""
    import numpy as np
    import torch
    from transformers import AutoTokenizer

    from edgerun.exporters.onnx import sensitivity as sens
    from edgerun.exporters.onnx import target
    from edgerun.exporters.onnx.fisher_stream import streamed_fisher
    from edgerun.exporters.reference import eval_token_ids, load_model, read_text_file

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    text = read_text_file(None, sens.CALIB_TEXT, "calibration text", "--calib-text")
    windows = target._short(np.asarray(eval_token_ids(tokenizer, text), dtype=np.int64))
    windows = windows[:windows_n] if windows_n else windows
    config = json.loads((checkpoint / "config.json").read_text())
    layers = int(config["num_hidden_layers"])
    nodes = [f"model.layers.{i}.{p}" for i in range(layers) for p in _PROJECTIONS] + ["lm_head"]
    if how == "whole":
        model = load_model(checkpoint)
        groups = sens.torch_groups(model, nodes)
        sens.fisher_sensitivity(model, windows, groups, BLOCK, SYMMETRIC)
    else:
        groups = streamed_fisher(checkpoint, nodes, windows, BLOCK, SYMMETRIC)
    out.write_text(json.dumps({g.role.key: g.sensitivity for g in groups}))
    del torch


_PROJECTIONS = (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
)  # fmt: skip


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--child", type=click.Choice(["whole", "layers"]), hidden=True)
@click.option("--out", type=click.Path(path_type=Path), hidden=True)
@click.option("--windows", "windows_n", type=int, help="Only the first N calibration windows.")
@click.option(
    "--only", type=click.Choice(["whole", "layers"]), help="One way only (big shapes: layers)."
)
def main(
    checkpoint: Path, child: str | None, out: Path | None, windows_n: int | None, only: str | None
) -> None:
    """Whole-model vs layer-by-layer Fisher on CHECKPOINT (a llama-like safetensors one)."""
    if child:
        assert out is not None
        sensitivities(checkpoint, child, out, windows_n)
        return
    logs = work_dir() / "fisher-stream"
    rows, found = {}, {}
    for how in [only] if only else ["layers", "whole"]:
        got = logs / f"{how}.json"
        cmd = [sys.executable, "-m", "benchmarks.fisher_stream", str(checkpoint),
               "--child", how, "--out", str(got)]  # fmt: skip
        cmd += ["--windows", str(windows_n)] if windows_n else []
        result = run_measured(cmd, logs / f"{how}.log")
        rows[how] = {"rc": result.rc, "wall_s": round(result.wall_s, 1),
                     "peak_rss_bytes": result.peak_rss_bytes}  # fmt: skip
        found[how] = json.loads(got.read_text()) if result.rc == 0 else {}
        click.echo(f"{how}: {rows[how]}")
    compare = {}
    if found.get("whole") and found.get("layers"):
        keys = sorted(found["whole"])
        rel = [
            abs(found["layers"][k] - found["whole"][k]) / max(found["whole"][k], 1e-30)
            for k in keys
        ]
        order = {how: sorted(keys, key=lambda k, h=how: -found[h][k]) for how in found}
        compare = {"groups": len(keys), "max_rel_diff": max(rel),
                   "same_ranking": order["whole"] == order["layers"]}  # fmt: skip
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"fisher-stream-{stamp}.json"
    path.write_text(json.dumps({
        "what": "q4-mixed Fisher sensitivity: whole model vs layer by layer",
        "checkpoint": str(checkpoint), "created": stamp, "machine": machine.describe(),
        "commit": machine.git_commit(), "windows": windows_n, "runs": rows, "compare": compare,
    }, indent=1))  # fmt: skip
    click.echo(f"{compare}\nresults: {path}")


if __name__ == "__main__":
    main()
