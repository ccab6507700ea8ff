"""The family matrix, measured: for every registered family (edgerun.exporters.families), export its
tiny test checkpoint (tests/tiny_models.py) to onnx-fp32, onnx-int4, gguf-f16 and gguf-q8_0, and
record each artifact's largest logit error against transformers, its relative RMS error, its
greedy-token agreement, the GGUF tokenizer parity and the export wall time. The tests
(tests/test_families.py) hold the same numbers to fixed bounds; this records what they are.

    python -m benchmarks.families [--only llama,gemma2] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import numpy as np


def _measure(name: str, root: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    from edgerun.core.manifest import read_manifest
    from edgerun.exporters import families
    from edgerun.exporters.formats import family_of
    from edgerun.exporters.pipeline import export
    from edgerun.exporters.validate import Thresholds
    from tests.tiny_models import build_family_model

    family = families.BY_NAME[name]
    src = build_family_model(name, root / "src")
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    ids = np.random.default_rng(0).integers(5, model.config.vocab_size, size=48).astype(np.int64)
    with torch.inference_mode():
        ref = model(input_ids=torch.from_numpy(ids[None, :]), use_cache=False).logits[0].numpy()
    centred = float(np.sqrt(np.mean((ref - ref.mean(axis=-1, keepdims=True)) ** 2)))
    gate = Thresholds(max_ppl_ratio=10.0, max_mean_kl=10.0, min_top1_agreement=0.0)
    started = time.perf_counter()
    results = export(
        str(src), ",".join(families.FORMATS), root / "out", builder="optimum", thresholds=gate,
        progress=False, probe=False, window=128,
    )  # fmt: skip
    row: dict[str, Any] = {"family": name, "export_s": round(time.perf_counter() - started, 1)}
    for result in results:
        if not result.written:
            row[result.format] = {"written": False, "reason": result.reason}
            continue
        manifest = read_manifest(result.path)
        got = family_of(result.format).logits_fn(result.path, manifest)(ids)
        row[result.format] = {
            "max_abs_error": float(np.abs(got - ref).max()),
            "relative_rms_error": float(np.sqrt(np.mean((got - ref) ** 2)) / centred),
            "top1_agreement": float(np.mean(got.argmax(-1) == ref.argmax(-1))),
        }
        parity = (manifest.get("gguf") or {}).get("tokenizer_parity")
        if parity is not None:
            row[result.format]["tokenizer_identical"] = parity["identical"]
    row["covers"] = family.covers
    return row


def main() -> None:
    from edgerun.exporters import families

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="comma list of family names")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else [f.name for f in families.FAMILIES]
    rows = []
    with TemporaryDirectory() as tmp:
        for name in names:
            rows.append(_measure(name, Path(tmp) / name))
            print(json.dumps(rows[-1]), flush=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"families-{stamp}.json"
    path.write_text(json.dumps({"created": stamp, "rows": rows}, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
