"""``python -m benchmarks.tune_gate [EXPORT_DIR]``: the tune fidelity gate's two checks side by
side on the settings that can change outputs (issue 25): against the artifact's shipped
reference model (what `edgerun tune` uses) and against the default settings' outputs (the
fallback without a reference). Default EXPORT_DIR: the tune study's SmolLM2 exports.
Results: benchmarks/results/tune-gate-<time>.json."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from benchmarks import machine, work_dir, write_results

CHANGES = {
    "onnx-int4": [{"accuracy_level": 1}],
    "gguf-q4_k_m": [
        {"flash_attn": True},
        {"kv_cache": "q8_0"},
        {"flash_attn": True, "kv_cache": "q8_0"},
    ],
}


@click.command()
@click.argument("exported", required=False, type=click.Path(exists=True, path_type=Path))
def main(exported: Path | None) -> None:
    """Reference-scored vs default-compared fidelity checks; results JSON."""
    from edgerun.device.profile import get_profile
    from edgerun.tune.fidelity import FidelityGate, drift_bound
    from edgerun.tune.plan import plan_space
    from edgerun.tune.topology import read_topology

    root = exported or work_dir() / "tune" / "smollm2-135m"
    out: dict[str, Any] = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                           "machine": machine.describe(), "formats": {}}  # fmt: skip
    for fmt, changes in CHANGES.items():
        arm = plan_space(root / fmt, get_profile("generic-x86_64"), read_topology(), 2).arms[0]
        scored = FidelityGate(arm.mean_kl, arm)
        compared = FidelityGate(arm.mean_kl, arm, scored=lambda a, c: None)
        rows = []
        for change in changes:
            config = {**arm.default(), **change}
            rows.append({"change": change, "reference": scored(arm, config) or "eligible",
                         "default_outputs": compared(arm, config) or "eligible"})  # fmt: skip
            click.echo(f"{fmt} {change}: {rows[-1]['reference']} | {rows[-1]['default_outputs']}")
        out["formats"][fmt] = {
            "manifest_mean_kl": arm.mean_kl, "bound": drift_bound(arm.mean_kl), "rows": rows,
            "reference_checks": scored.checks, "default_output_checks": compared.checks,
        }  # fmt: skip
    click.echo(f"results: {write_results('tune-gate', out)}")


if __name__ == "__main__":
    main()
