"""The off-grid reference: SmolLM2-135M moved off its 4-bit grid, then fine-tuned back to a model.

The demo checkpoint is dequantized from a Q4_1 GGUF: every decoder weight block of 32 is
d * q + m with q in 0..15 (its min and max are grid points), so any asymmetric block-32 quantizer
with float offsets lands back on that grid and looks nearly lossless for that reason alone. This
script makes a second reference with no such grid, seeded and documented:

1. every decoder Linear weight gets uniform noise of one grid step peak to peak (+-d/2, d the
   block's Q4_1 step), so the weights spread evenly between grid points; this alone raises the
   eval-text perplexity (reported);
2. a short AdamW fine-tune of every parameter on a shipped text (benchmarks/data/finetune.txt,
   never used for calibration or validation) recovers much of that, so the reference is a trained
   model again, not a noised one.

It reports the share of decoder blocks still exactly on a 4-bit grid (1.0 before, 0 after) and the
mean distance of the weights to the grid they started on, in steps (0 on it, 0.25 when spread
uniformly), and the eval-text perplexity of the source, the noised and the final model.

    .venv/bin/python -m benchmarks.offgrid --out $EDGERUN_HOME/offgrid/smollm2-135m-offgrid

Deterministic on one machine (seeded torch CPU, fixed threads); a few minutes on 2 cores. The
output is an HF checkpoint directory that `edgerun export` accepts as a source.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

FINETUNE_TEXT = Path(__file__).parent / "data" / "finetune.txt"
BLOCK = 32


def grid_share(weight: np.ndarray, block: int = BLOCK, tol: float = 1e-3) -> float:
    """Share of contiguous blocks of `block` weights that lie on a 4-bit grid d * q + m (q an
    integer in 0..15, d and m any floats), within `tol` grid steps. Blocks with fewer than two
    distinct values count as on the grid."""
    blocks = np.asarray(weight, dtype=np.float64).reshape(-1, block)
    lo = blocks.min(axis=1, keepdims=True)
    span = blocks.max(axis=1, keepdims=True) - lo
    on = np.ones(len(blocks), dtype=bool)
    flat = span[:, 0] > 0
    rel = (blocks[flat] - lo[flat]) / span[flat]  # in [0, 1]
    # the grid step is span / k for some k in 1..15 (k = the block's q range)
    best = np.zeros(len(rel), dtype=bool)
    for k in range(1, 16):
        scaled = rel * k
        best |= np.abs(scaled - np.round(scaled)).max(axis=1) <= tol
    on[flat] = best
    return float(on.mean())


def grid_residual(before: np.ndarray, after: np.ndarray, block: int = BLOCK) -> float:
    """Mean distance of `after`'s weights to the block grid `before` sat on (step = the block's
    span / 15, origin = its minimum), in steps: 0 on the grid, 0.25 when spread uniformly."""
    b = np.asarray(before, dtype=np.float64).reshape(-1, block)
    a = np.asarray(after, dtype=np.float64).reshape(-1, block)
    lo = b.min(axis=1, keepdims=True)
    step = (b.max(axis=1, keepdims=True) - lo) / 15
    keep = step[:, 0] > 0
    pos = (a[keep] - lo[keep]) / step[keep]
    return float(np.abs(pos - np.round(pos)).mean())


def _linear_weights(model: Any) -> dict[str, np.ndarray]:
    """The decoder layers' Linear weights (the tied lm_head / embedding, on a Q8_0 grid, apart)."""
    import torch

    return {
        name: module.weight.detach().float().numpy().copy()
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and ".layers." in name
        and module.weight.shape[-1] % BLOCK == 0
    }


def add_grid_noise(model: Any, fraction: float, generator: Any) -> None:
    """Add uniform noise of +-fraction/2 of each block's 4-bit grid step (span / 15) to every
    decoder Linear weight: at fraction 1 the weights are spread evenly between grid points."""
    import torch

    with torch.no_grad():
        for name, module in model.named_modules():
            if not isinstance(module, torch.nn.Linear) or ".layers." not in name:
                continue
            w = module.weight
            blocks = w.view(-1, BLOCK)
            step = (
                blocks.max(dim=1, keepdim=True).values - blocks.min(dim=1, keepdim=True).values
            ) / 15
            noise = (torch.rand(blocks.shape, generator=generator) - 0.5) * fraction * step
            blocks.add_(noise)


def eval_ppl(model: Any, tokenizer: Any, window: int = 256) -> float:
    """Perplexity on the shipped evaluation text (reported only; never trained on)."""
    import torch

    from edgerun.exporters.reference import read_eval_text

    ids = tokenizer(read_eval_text(None), add_special_tokens=False)["input_ids"]
    nll, count = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(ids) - 1, window):
            chunk = torch.tensor([ids[i : i + window]])
            if chunk.shape[1] < 2:
                continue
            loss = model(input_ids=chunk, labels=chunk).loss
            nll += float(loss) * (chunk.shape[1] - 1)
            count += chunk.shape[1] - 1
    return float(np.exp(nll / count))


def _grid_report(weights: dict[str, np.ndarray], start: dict[str, np.ndarray]) -> dict[str, float]:
    sizes = np.array([w.size for w in weights.values()], dtype=np.float64)
    shares = np.array([grid_share(w) for w in weights.values()])
    resid = np.array([grid_residual(start[n], w) for n, w in weights.items()])
    return {
        "grid_share": float((shares * sizes).sum() / sizes.sum()),
        "residual_steps": float((resid * sizes).sum() / sizes.sum()),
    }


def _chunks(tokenizer: Any, text: str, length: int) -> list[Any]:
    import torch

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [torch.tensor([ids[i : i + length]]) for i in range(0, len(ids) - length + 1, length)]


def make_offgrid(
    source: Path,
    out: Path,
    steps: int,
    lr: float,
    seed: int,
    seq: int,
    threads: int,
    noise: float,
) -> dict[str, Any]:
    """Noise `source` (an HF checkpoint dir) off its grid, fine-tune it, save it to `out`;
    return the report."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    chunks = _chunks(tokenizer, _text(), seq)
    start = _linear_weights(model)
    before = _grid_report(start, start)
    ppl_source = eval_ppl(model, tokenizer)
    add_grid_noise(model, noise, torch.Generator().manual_seed(seed))
    ppl_noised = eval_ppl(model, tokenizer)
    model.train()
    optim = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    order = torch.randperm(steps * 1000)  # seeded order of chunks
    losses = []
    t0 = time.perf_counter()
    for step in range(steps):
        batch = chunks[int(order[step]) % len(chunks)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    model.eval()
    after = _grid_report(_linear_weights(model), start)
    ppl_after = eval_ppl(model, tokenizer)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    report = {
        "source": str(source),
        "out": str(out),
        "noise_steps": noise,
        "steps": steps,
        "lr": lr,
        "seed": seed,
        "seq": seq,
        "train_loss_first": losses[0],
        "train_loss_last": losses[-1],
        "wall_s": round(time.perf_counter() - t0, 1),
        "eval_ppl": {"source": ppl_source, "noised": ppl_noised, "offgrid": ppl_after},
        "grid_before": before,
        "grid_after": after,
    }
    (out / "offgrid.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _text() -> str:
    from edgerun.exporters.reference import read_text_file

    return read_text_file(None, FINETUNE_TEXT, "fine-tune text", "--text")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="smollm2-135m", help="anything `edgerun pull` takes")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--noise", type=float, default=1.0, help="in grid steps, peak to peak")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    from edgerun.sources.resolve import resolve

    source = resolve(args.source).path
    report = make_offgrid(
        source, args.out, args.steps, args.lr, args.seed, args.seq, args.threads, args.noise
    )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
