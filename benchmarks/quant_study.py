"""``python -m benchmarks.quant_study``: int4 rounding methods scored on one checkpoint, fast.

Issue 23's choice between calibrated rounding (GPTQ) and importance-weighted RTN, and of the
q4-mixed byte budget, without an ONNX export per variant: every linear layer of the PyTorch fp32
checkpoint is replaced by the float weights the MatMulNBits kernel computes with (the same
quantizer functions the export calls: exporters/onnx/weighted.py, exporters/onnx/gptq.py), and
the model is scored against the fp32 one on the shipped eval text (mean KL, PPL ratio, top-1;
edgerun.exporters.validate.Reference, 256-token windows, as the export's gate). Statistics come
from the shipped calibration text (never the eval text). The 8-bit projections are those an
export's manifest recorded (`--manifest`, the q4-mixed plan of that reference), optionally
extended by its recorded Fisher sensitivity per byte to a larger `--budget`; or, with
`--points BLOCK:BPW,...`, plans made here: the export's Fisher ranking (computed on the whole
model at that block size, asymmetric) raised to 8 bits per group while the linears' bits per
weight stay within BPW, once in ranking order and once with the lm_head first ("head8"). Each
quantized weight is computed once per (bits, block, method) and kept on disk (`--cache`), so a
plan costs one scoring pass; all rows of a method are run before the next method's. The
8-bit weights of GPTQ rows are the weighted search's (the export rounds them by GPTQ too; the
whole model in 8 bits scores KL ~0.005, so the difference is below what the rows resolve).

What it leaves out, so the numbers are comparisons, not the export's: onnxruntime's int8
activation quantization (accuracy_level 4) and the embedding (left in fp32 here).

    .venv/bin/python -m benchmarks.quant_study --model DIR --manifest MANIFEST --out FILE
    .venv/bin/python -m benchmarks.quant_study --model DIR --points 32:5.69,64:6.1 --out FILE

Bits per weight here count the linears only (codes, fp32 scales, zero points); an exported
SmolLM2-135M artifact adds about 0.15 (rotary caches, norms), e.g. 5.69 here is 5.84 there.
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


def quantized_weight(
    w_kn: np.ndarray, gram: np.ndarray, bits: int, method: str, block: int = 32
) -> np.ndarray:
    """The float weight [K, N] the kernel computes with, asymmetric, block `block`, by `method`."""
    from edgerun.exporters.onnx import gptq, weighted

    k = w_kn.shape[0]
    imp = np.diag(gram).astype(np.float32)
    if method == "rtn":
        blocks = weighted.quantize(w_kn, imp, bits, block, False, steps=0)
    elif method == "weighted":
        blocks = weighted.quantize(w_kn, imp, bits, block, False)
    elif method == "gptq":
        blocks = gptq.quantize(w_kn, gram, bits, block, False)
    elif method == "gptq-rtn-scales":
        blocks = gptq.quantize(w_kn, gram, bits, block, False, steps=0)
    else:
        raise click.BadParameter(f"unknown method {method}")
    return weighted.dequantize(blocks, k, bits, block)


class WeightCache:
    """Dequantized weights [N, K] (torch's layout) by (module, bits, block, method), each
    computed once and kept on disk under `root` (memory holds the model, not every variant);
    the fp32 originals are kept there too."""

    def __init__(self, root: Path, model: Any, found: dict[str, np.ndarray]) -> None:
        self.root, self.found = root, found
        root.mkdir(parents=True, exist_ok=True)
        for name, mod in _linears(model).items():
            np.save(root / f"{name}.fp32.npy", mod.weight.detach().numpy())

    def original(self, name: str) -> np.ndarray:
        """The fp32 weight [N, K] of module `name`."""
        return np.load(self.root / f"{name}.fp32.npy", mmap_mode="r")

    def get(self, name: str, bits: int, block: int, method: str) -> np.ndarray:
        """The weight [N, K] module `name` computes with in this setting."""
        if bits == 8 and method == "gptq":  # 8-bit error is too small to matter: the search's
            method = "weighted"
        path = self.root / f"{name}.{method}.{bits}.{block}.npy"
        if not path.exists():
            w_kn = np.ascontiguousarray(self.original(name).T)
            dq = quantized_weight(w_kn, gram_of(name, self.found), bits, method, block)
            np.save(path, np.ascontiguousarray(dq.T))
        return np.load(path, mmap_mode="r")


def genai_nodes(model: Any) -> list[str]:
    """The MatMul node names onnxruntime-genai's builder gives this model's projections (q, k
    and v fused into qkv_proj), so that sensitivity groups match an export's."""
    names = []
    for name in _linears(model):
        head, _, last = name.rpartition(".")
        if last in ("k_proj", "v_proj"):
            continue
        if last == "q_proj":
            last = "qkv_proj"
        if name == "lm_head":
            names.append("/lm_head/MatMul")
            continue
        layer = head.split(".layers.")[-1].split(".")[0]
        part = "attn" if "self_attn" in head else "mlp"
        names.append(f"/model/layers.{layer}/{part}/{last}/MatMul")
    return names


def fisher_ranked(model: Any, ids: np.ndarray, block: int) -> list[Any]:
    """The export's q4-mixed ranking (Fisher sensitivity of each group's asymmetric 4-bit error
    at block `block`, per extra byte), computed on the whole model over the calibration ids."""
    from edgerun.exporters.onnx import sensitivity as sens
    from edgerun.exporters.onnx.target import FISHER_WINDOW, FISHER_WINDOWS

    groups = sens.torch_groups(model, genai_nodes(model))
    step = FISHER_WINDOW
    windows = [ids[i : i + step] for i in range(0, len(ids) - step + 1, step)][:FISHER_WINDOWS]
    sens.fisher_sensitivity(model, windows, groups, block, False)
    return sens.rank(groups)


def plan_to_bpw(
    model: Any, ranked: list[Any], target: float, block: int, head8: bool = False
) -> tuple[dict[str, int], list[str]]:
    """module name -> bits: groups raised to 8 bits in `ranked` order (the lm_head first with
    `head8`) while the linears' bits per weight stay <= `target` (a group that does not fit is
    skipped, as target.raise_within does). Returns the plan and the raised keys."""
    names = {id(m): n for n, m in _linears(model).items()}
    order = sorted(ranked, key=lambda g: g.role.key != "lm_head") if head8 else ranked
    bits: dict[str, int] = {}
    raised = []
    for group in order:
        trial = bits | {names[id(m)]: 8 for m in group.modules}
        if bits_per_weight(model, trial, block) <= target:
            bits, raised = trial, raised + [group.role.key]
    return bits, raised


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


def bits_per_weight(model: Any, bits: dict[str, int], block: int = 32) -> float:
    """Decoder linears' bits per weight in MatMulNBits asymmetric (codes + an fp32 scale and a
    zero point of `bits` per block of `block`)."""
    total = n = 0.0
    for name, mod in _linears(model).items():
        b = bits.get(name, 4)
        total += mod.weight.numel() * (b + (32 + b) / block)
        n += mod.weight.numel()
    return total / n


def score(model: Any, reference: Any) -> dict[str, float]:
    from edgerun.exporters.reference import torch_logits_fn

    v = reference.score(torch_logits_fn(model))
    return {"ppl_ratio": v.ppl_ratio, "mean_kl": v.mean_kl, "top1": v.top1_agreement}


def _reference(model: Any, ids: list[int], text: str) -> Any:
    """The export gate's Reference on `ids`, its log-probs kept in float32 (half the RAM of
    float64: 0.55 GB for SmolLM2's vocabulary on the eval text; KLs agree to 1e-8)."""
    from edgerun.exporters.reference import torch_logits_fn
    from edgerun.exporters.validate import Reference, log_softmax, windows

    logits = torch_logits_fn(model)
    chunks = windows(ids, 256)
    logprobs = [log_softmax(logits(w))[:-1].astype(np.float32) for w in chunks]
    return Reference.from_logprobs(chunks, logprobs, text)


def _points(points: str) -> list[tuple[int, float]]:
    """ "BLOCK:BPW,..." -> [(block, target bits per weight)] in the order given."""
    try:
        return [(int(b), float(t)) for b, t in (p.split(":") for p in points.split(",") if p)]
    except ValueError:
        raise click.BadParameter(f"{points!r}: give BLOCK:BPW pairs, e.g. 32:5.7,64:6.1") from None


def _plans(
    model: Any, record: dict[str, Any], budgets: str, points: str, ranking: Any
) -> list[tuple[dict[str, Any], dict[str, int]]]:
    """(row fields incl. block, plan) of every plan asked for: the manifest's and its budgets
    (block 32), then each BLOCK:BPW point by the Fisher ranking at that block (`ranking(block)`),
    and the same with the lm_head raised first where that is a different plan."""
    plans: list[tuple[dict[str, Any], dict[str, int]]] = []
    if record.get("recipe", {}).get("raised") is not None:
        for budget in [None] + [float(b) for b in budgets.split(",") if b]:
            fields = {"block": 32, "plan": "manifest", "budget": budget}
            plans.append((fields, plan_bits(model, record, budget)))
    for block, target in _points(points):
        ranked = ranking(block)
        plain, raised = plan_to_bpw(model, ranked, target, block)
        fields = {"block": block, "plan": "fisher", "target_bpw": target}
        plans.append((fields | {"raised": raised}, plain))
        head, raised = plan_to_bpw(model, ranked, target, block, head8=True)
        if head != plain:
            plans.append((fields | {"plan": "head8", "raised": raised}, head))
    return plans


@click.command()
@click.option("--model", "path", required=True, type=click.Path(path_type=Path, exists=True))
@click.option(
    "--manifest",
    type=click.Path(path_type=Path, exists=True),
    help="Its q4-mixed plan (block 32 rows); none: all 4-bit.",
)
@click.option("--methods", default="rtn,weighted,gptq", show_default=True)
@click.option("--budgets", default="", help="Comma list of extra q4-mixed budgets to try.")
@click.option(
    "--points", default="", help="BLOCK:BPW,...: Fisher plans at these block sizes and sizes."
)
@click.option("--cache", type=click.Path(path_type=Path), help="Quantized weights' folder.")
@click.option("--out", required=True, type=click.Path(path_type=Path))
def main(
    path: Path,
    manifest: Path | None,
    methods: str,
    budgets: str,
    points: str,
    cache: Path | None,
    out: Path,
) -> None:
    """Score int4 rounding methods and plans on one checkpoint (see the module docstring)."""
    import functools
    import tempfile

    import torch

    from edgerun.exporters.onnx.sensitivity import CALIB_TEXT
    from edgerun.exporters.reference import (
        DEFAULT_EVAL_TEXT,
        eval_token_ids,
        load_model,
        load_tokenizer,
    )

    torch.set_num_threads(1)  # a shared machine: no spinning OpenMP barriers
    model, tok = load_model(path), load_tokenizer(path)
    record = json.loads(manifest.read_text())["quant"] if manifest else {"recipe": {}}
    eval_text = DEFAULT_EVAL_TEXT.read_text()
    reference = _reference(model, eval_token_ids(tok, eval_text), eval_text)
    calib = np.asarray(eval_token_ids(tok, CALIB_TEXT.read_text()), np.int64)
    found = grams(model, [calib[i : i + 512] for i in range(0, len(calib), 512)])
    ranking = functools.cache(lambda block: fisher_ranked(model, calib, block))
    plans = _plans(model, record, budgets, points, ranking)
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        weights = WeightCache(Path(scratch), model, found)
        rows: list[dict[str, Any]] = []
        for method in methods.split(","):
            for fields, plan in plans:
                started = time.perf_counter()
                block = fields["block"]
                for name, mod in _linears(model).items():
                    dq = weights.get(name, plan.get(name, 4), block, method)
                    mod.weight.data = torch.from_numpy(np.array(dq))
                row = {"method": method} | fields
                row["bits_per_weight"] = bits_per_weight(model, plan, block)
                row |= score(model, reference) | {"wall_s": time.perf_counter() - started}
                click.echo(json.dumps({k: v for k, v in row.items() if k != "raised"}), err=True)
                rows.append(row)
                out.write_text(json.dumps({"model": str(path), "rows": rows}, indent=1))
                for name, mod in _linears(model).items():
                    mod.weight.data = torch.from_numpy(np.array(weights.original(name)))


if __name__ == "__main__":
    main()
