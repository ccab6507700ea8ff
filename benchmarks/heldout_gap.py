"""``python -m benchmarks.heldout_gap RESULTS.json``: how far a score on the calibration text is
from the same artifact's score on held-out text (issue 23, item 4).

The importance statistics, and `--target-kl`'s search, are measured on the calibration text
(exporters/data/calib.txt); validation scores on the evaluation text (exporters/data/eval.txt),
which neither sees. For every written artifact of a fidelity results file
(benchmarks.fidelity), this scores it against its fp32 reference on both texts, the same windows
and metrics as the export's validation, and reports the ratio held-out KL / calibration KL: the
margin a target aimed on the calibration text needs to hold on held-out text. The results go
to benchmarks/results/heldout-gap-<stamp>.json.
"""

from __future__ import annotations

import json
import statistics
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

RESULTS = Path(__file__).parent / "results"


def score_texts(source: str, rows: list[dict[str, Any]], window: int) -> list[dict[str, Any]]:
    """Each written row of one reference scored on the calibration and the evaluation text."""
    from edgerun.core.manifest import read_manifest
    from edgerun.exporters.formats import family_of
    from edgerun.exporters.onnx.sensitivity import CALIB_TEXT
    from edgerun.exporters.reference import (
        eval_token_ids,
        load_model,
        load_tokenizer,
        read_eval_text,
        read_text_file,
        torch_logits_fn,
    )
    from edgerun.exporters.validate import Reference
    from edgerun.sources.resolve import resolve

    path = resolve(source).path
    model, tokenizer = load_model(path), load_tokenizer(path)
    texts = {
        "calibration": read_text_file(None, CALIB_TEXT, "calibration text", ""),
        "evaluation": read_eval_text(None),
    }
    refs = {
        name: Reference(torch_logits_fn(model), eval_token_ids(tokenizer, text), text, window)
        for name, text in texts.items()
    }
    out = []
    for row in [r for r in rows if r.get("path")]:
        artifact = Path(row["path"])
        manifest = read_manifest(artifact) or {}
        logits = family_of(row["format"]).logits_fn(artifact, manifest)
        scores = {name: ref.score(logits).to_json() for name, ref in refs.items()}
        kl = {name: s["mean_kl"] for name, s in scores.items()}
        out.append(
            {
                "label": row["label"],
                "mean_kl": kl,
                "ppl_ratio": {name: s["ppl_ratio"] for name, s in scores.items()},
                "tokens": {name: s["tokens"] for name, s in scores.items()},
                "heldout_over_calibration": kl["evaluation"] / kl["calibration"],
            }
        )
    return out


@click.command()
@click.argument("results", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--window", default=256, show_default=True, help="Tokens per scoring window.")
def main(results: Path, window: int) -> None:
    """Score RESULTS' artifacts on the calibration and the held-out text."""
    found = json.loads(results.read_text())
    report: dict[str, Any] = {"from": results.name, "references": []}
    for ref in found["references"]:
        rows = score_texts(ref["source"], ref["rows"], window)
        report["references"].append({"name": ref["name"], "rows": rows})
        for row in rows:
            kl = row["mean_kl"]
            click.echo(
                f"{ref['name']} | {row['label']} | calib KL {kl['calibration']:.4f} |"
                f" held-out KL {kl['evaluation']:.4f} | x{row['heldout_over_calibration']:.2f}"
            )
    ratios = [r["heldout_over_calibration"] for ref in report["references"] for r in ref["rows"]]
    report["ratio"] = {"min": min(ratios), "median": statistics.median(ratios), "max": max(ratios)}
    click.echo(f"held-out / calibration KL: {report['ratio']}")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"heldout-gap-{stamp}.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
