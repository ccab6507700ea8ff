"""``python -m benchmarks.quant_study``: int4 rounding methods scored on one checkpoint, fast.

Issue 23's choice between calibrated rounding (GPTQ) and importance-weighted RTN, and of the
q4-mixed byte budget, without an ONNX export per variant: every linear layer of the PyTorch fp32
checkpoint is replaced by the float weights the MatMulNBits kernel computes with (the same
quantizer functions the export calls: exporters/onnx/weighted.py, exporters/onnx/gptq.py), and
the model is scored against the fp32 one on the shipped eval text (mean KL, PPL ratio, top-1;
edgerun.exporters.validate.Reference, 256-token windows, as the export's gate). Statistics come
from the shipped calibration text (never the eval text). The 8-bit projections are those an
export's manifest recorded (`--manifest`, the q4-mixed plan of that reference), optionally
extended by its recorded Fisher sensitivity per byte to a larger `--budget`.

What it leaves out, so the numbers are comparisons, not the export's: onnxruntime's int8
activation quantization (accuracy_level 4) and the embedding (left in fp32 here).

    .venv/bin/python -m benchmarks.quant_study --model DIR --manifest MANIFEST --out FILE
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

SHARED = {"k_proj": "q_proj", "v_proj": "q_proj", "up_proj": "gate_proj"}  # same input


def _linears(model: Any) -> dict[str, Any]:
    import torch

    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def grams(model: Any, windows: list[np.ndarray]) -> dict[str, np.ndarray]:
    """module name -> X^T X / tokens (float32) of its input on `windows`; k/v share q's, up
    gate's (the same tensor reaches them)."""
    import torch

    sums: dict[str, Any] = {}
    rows: dict[str, int] = {}

    def hook(name: str) -> Any:
        def run(mod: Any, args: Any, out: Any) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            sums[name] = sums.get(name, 0) + (x.T @ x)
            rows[name] = rows.get(name, 0) + x.shape[0]

        return run

    mods = {n: m for n, m in _linears(model).items() if n.rsplit(".", 1)[-1] not in SHARED}
    handles = [m.register_forward_hook(hook(n)) for n, m in mods.items()]
    with torch.no_grad():
        for w in windows:
            model(torch.from_numpy(w)[None])
    for h in handles:
        h.remove()
    return {n: (s / rows[n]).numpy() for n, s in sums.items()}


def gram_of(name: str, found: dict[str, np.ndarray]) -> np.ndarray:
    """The matrix of module `name` (k/v/up read q's / gate's)."""
    head, _, last = name.rpartition(".")
    return found[f"{head}.{SHARED[last]}" if last in SHARED else name]


def quantized_weight(w_kn: np.ndarray, gram: np.ndarray, bits: int, method: str) -> np.ndarray:
    """The float weight [K, N] the kernel computes with, asymmetric block 32, by `method`."""
    from edgerun.exporters.onnx import gptq, weighted

    k = w_kn.shape[0]
    imp = np.diag(gram).astype(np.float32)
    if method == "rtn":
        blocks = weighted.quantize(w_kn, imp, bits, 32, False, steps=0)
    elif method == "weighted":
        blocks = weighted.quantize(w_kn, imp, bits, 32, False)
    elif method == "gptq":
        blocks = gptq.quantize(w_kn, gram, bits, 32, False)
    elif method == "gptq-rtn-scales":
        blocks = gptq.quantize(w_kn, gram, bits, 32, False, steps=0)
    else:
        raise click.BadParameter(f"unknown method {method}")
    return weighted.dequantize(blocks, k, bits, 32)


def plan_bits(model: Any, manifest: dict[str, Any], budget: float | None) -> dict[str, int]:
    """module name -> bits: 8 for the keys the manifest's recipe raised (fused keys: every part),
    then, with `budget`, more by the recorded sensitivity per extra byte until the extra bytes
    reach budget x the all-4-bit bytes (target.raise_within's rule)."""
    from edgerun.exporters.onnx.recipes import node_role
    from edgerun.exporters.onnx.sensitivity import FUSED

    recipe = manifest["recipe"]
    raised = set(recipe.get("raised", []))
    sens = recipe.get("sensitivity", {})
    keys: dict[str, list[tuple[str, int]]] = {}
    for name, mod in _linears(model).items():
        role = node_role(name)
        if role is None:
            continue
        key = role.key
        if role.role in FUSED and role.layer is not None:
            fused = f"L{role.layer}.{FUSED[role.role]}"
            key = fused if fused in sens or fused in raised else key
        keys.setdefault(key, []).append((name, mod.weight.numel()))
    bits = {name: (8 if key in raised else 4) for key, parts in keys.items() for name, _ in parts}
    if budget is not None:
        per_weight = (4 + 32 / 32) / 8
        total = per_weight * sum(p for parts in keys.values() for _, p in parts)
        extra = {k: sum(p for _, p in parts) * (8 - 4) / 8 for k, parts in keys.items()}
        spent = sum(extra[k] for k in raised if k in extra)
        order = sorted(keys, key=lambda k: -(sens.get(k, 0.0) / extra[k]))
        for key in order:
            if key in raised or spent + extra[key] > budget * total:
                continue
            spent += extra[key]
            for name, _ in keys[key]:
                bits[name] = 8
    return bits


def bits_per_weight(model: Any, bits: dict[str, int]) -> float:
    """Decoder linears' bits per weight in MatMulNBits asym block 32 (codes + fp32 scale + zero
    point nibble / byte per block)."""
    total = n = 0.0
    for name, mod in _linears(model).items():
        b = bits.get(name, 4)
        total += mod.weight.numel() * (b + 32 / 32 + b / 32)
        n += mod.weight.numel()
    return total / n


def score(model: Any, reference: Any) -> dict[str, float]:
    from edgerun.exporters.reference import torch_logits_fn

    v = reference.score(torch_logits_fn(model))
    return {"ppl_ratio": v.ppl_ratio, "mean_kl": v.mean_kl, "top1": v.top1_agreement}


@click.command()
@click.option("--model", "path", required=True, type=click.Path(path_type=Path, exists=True))
@click.option(
    "--manifest",
    type=click.Path(path_type=Path, exists=True),
    help="Its q4-mixed plan; none: all 4-bit.",
)
@click.option("--methods", default="rtn,weighted,gptq", show_default=True)
@click.option("--budgets", default="", help="Comma list of extra q4-mixed budgets to try.")
@click.option("--out", required=True, type=click.Path(path_type=Path))
def main(path: Path, manifest: Path | None, methods: str, budgets: str, out: Path) -> None:
    """Score int4 rounding methods and budgets on one checkpoint (see the module docstring)."""
    import torch

    from edgerun.exporters.onnx.sensitivity import CALIB_TEXT
    from edgerun.exporters.reference import (
        DEFAULT_EVAL_TEXT,
        eval_token_ids,
        load_model,
        load_tokenizer,
        torch_logits_fn,
    )
    from edgerun.exporters.validate import Reference

    torch.set_num_threads(2)
    model, tok = load_model(path), load_tokenizer(path)
    record = json.loads(manifest.read_text())["quant"] if manifest else {"recipe": {}}
    eval_text = DEFAULT_EVAL_TEXT.read_text()
    reference = Reference(torch_logits_fn(model), eval_token_ids(tok, eval_text), eval_text)
    calib = np.asarray(eval_token_ids(tok, CALIB_TEXT.read_text()), np.int64)
    found = grams(model, [calib[i : i + 512] for i in range(0, len(calib), 512)])
    originals = {n: m.weight.detach().clone() for n, m in _linears(model).items()}
    rows = []
    for budget in [None] + [float(b) for b in budgets.split(",") if b]:
        plan = plan_bits(model, record, budget)
        for method in methods.split(","):
            started = time.perf_counter()
            for name, mod in _linears(model).items():
                w_kn = originals[name].numpy().T
                dq = quantized_weight(w_kn, gram_of(name, found), plan.get(name, 4), method)
                mod.weight.data = torch.from_numpy(np.ascontiguousarray(dq.T))
            row = {
                "method": method,
                "budget": budget,
                "bits_per_weight": bits_per_weight(model, plan),
            }
            row |= score(model, reference) | {"quantize_s": time.perf_counter() - started}
            click.echo(json.dumps(row))
            rows.append(row)
    for name, mod in _linears(model).items():
        mod.weight.data = originals[name]
    out.write_text(
        json.dumps({"model": str(path), "manifest": str(manifest), "rows": rows}, indent=1)
    )


if __name__ == "__main__":
    main()
