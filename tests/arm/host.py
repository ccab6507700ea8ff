"""Host side of the ARM lane: build the tiny random llama of tests/tiny_models.py, export it to
onnx-fp32 and to onnx-int4 at accuracy levels 1 and 4, and record what the host computes from each
(tests/arm/measure.py) as the reference the emulated arm64 CPUs are held to.

    .venv/bin/python tests/arm/host.py OUT_DIR

Writes OUT_DIR/<name>/ (one artifact each) and OUT_DIR/reference.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(Path(__file__).parent)]

from measure import measure  # noqa: E402

# name -> (format, export options). int4 at accuracy level 4, whose kernels differ per ISA, is
# validated, so it ships the fidelity reference that `verify --fidelity` scores on each CPU.
ARTIFACTS = {
    "fp32": ("onnx-fp32", {"no_validate": True}),
    "int4-l1": ("onnx-int4", {"accuracy_level": 1, "no_validate": True}),
    "int4-l4": ("onnx-int4", {"accuracy_level": 4}),
}

DAMAGED = "int4-l4-damaged"


def export_all(out: Path) -> dict[str, Path]:
    """The tiny model and its three artifacts under `out` (validation skipped but for int4-l4:
    the exporter's tests cover it; here the host's own numbers are the reference)."""
    from edgerun.exporters import export
    from edgerun.exporters.reference import read_eval_text
    from tests.tiny_models import build_tiny_model

    checkpoint = build_tiny_model("llama", out / "checkpoint")
    # the first ~700 tokens of the shipped text (as the tests' short_eval_text): the reference
    # of the whole text (7,877 tiny-tokenizer tokens) took 103 s of a loaded host
    eval_text = out / "eval.txt"
    eval_text.write_text(read_eval_text(None)[:2000], encoding="utf-8")
    paths = {}
    for name, (fmt, options) in ARTIFACTS.items():
        (result,) = export(
            str(checkpoint), [fmt], out / name, progress=False, eval_text=eval_text, **options
        )
        if not result.written or result.path is None:
            raise SystemExit(f"export of {name} failed: {result.reason}")
        paths[name] = result.path
    return paths


def main(out: Path) -> None:
    """Export, measure on the host, write reference.json beside the artifacts, and a copy of
    int4-l4 with its scales tripled (DAMAGED) that verify --fidelity must flag on every CPU."""
    import shutil

    from tests.runtime_helpers import damage_int4_scales

    out.mkdir(parents=True, exist_ok=True)
    paths = export_all(out)
    shutil.copytree(paths["int4-l4"], out / DAMAGED)
    damage_int4_scales(out / DAMAGED, 3.0)
    reference = {
        name: {"path": str(path.relative_to(out)), **measure(path)} for name, path in paths.items()
    }
    (out / "reference.json").write_text(json.dumps(reference))
    for name, ref in reference.items():
        print(f"host {name}: tokens {ref['tokens']}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: host.py OUT_DIR")
    main(Path(sys.argv[1]))
