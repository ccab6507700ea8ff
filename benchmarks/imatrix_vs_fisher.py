"""``python -m benchmarks.imatrix_vs_fisher CHECKPOINT``: does q4-mixed's importance-matrix
ranking (edgerun.exporters.onnx.importance, layer by layer) pick as good a plan as the Fisher
ranking it replaced (a backward pass over the whole fp32 model per window)?

Both rankings fill the same 8-bit budget (the recipe's); each plan's KL and PPL ratio against
the fp32 reference are measured with the plan's weights fake-quantized by onnxruntime's own
quantizer (sensitivity.Calibration) on the first windows of the evaluation text, which neither
ranking saw. Prints one JSON object; results recorded in benchmarks/README.md ("Scale").
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--windows", default=4, show_default=True, help="Eval windows of 256 tokens.")
def main(checkpoint: Path, windows: int) -> None:
    """Compare the two rankings' q4-mixed plans on CHECKPOINT."""
    import torch
    from transformers import AutoTokenizer

    from edgerun.exporters.onnx import sensitivity as sens
    from edgerun.exporters.onnx import target
    from edgerun.exporters.onnx.importance import imatrix_sensitivity
    from edgerun.exporters.onnx.quant import WeightOnlyConfig
    from edgerun.exporters.onnx.recipes import get_recipe
    from edgerun.exporters.reference import (
        eval_token_ids,
        load_model,
        read_eval_text,
        read_text_file,
    )

    torch.manual_seed(0)
    config = WeightOnlyConfig(
        bits=4, block_size=32, symmetric=False, accuracy_level=4, algorithm="rtn"
    )
    recipe = get_recipe("q4-mixed")
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    calib = np.asarray(eval_token_ids(tokenizer, read_text_file(None, sens.CALIB_TEXT, "", "")))
    evals = np.asarray(eval_token_ids(tokenizer, read_eval_text(None)))
    model = load_model(checkpoint)
    nodes = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    fisher = target.ranked_groups(model, nodes, config, calib)
    groups, _, _ = imatrix_sensitivity(checkpoint, nodes, target._short(calib), 32, False)
    by_key = {g.role.key: g for g in fisher}  # the whole model's modules, for fake quantization
    imatrix = [by_key[g.role.key] for g in sens.rank(groups)]
    scorer = sens.Calibration(
        model, [evals[i * 256 : (i + 1) * 256] for i in range(windows)], 32, False
    )
    out = {}
    for name, ranked in (("fisher", fisher), ("imatrix", imatrix)):
        plan = recipe.plan(nodes)
        _, raised, spent = target.raise_within(ranked, plan, config, recipe.budget or 0.0)
        bits = {id(m): plan[g.role.name] for g in fisher for m in g.modules}
        kl, ppl_ratio = scorer.score(bits)
        out[name] = {"mean_kl": kl, "ppl_ratio": ppl_ratio, "raised": raised, "extra_bytes": spent}
    out["all_4bit"] = dict(
        zip(
            ("mean_kl", "ppl_ratio"),
            scorer.score({id(m): 4 for g in fisher for m in g.modules}),
            strict=True,
        )
    )
    click.echo(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
