"""Make docs/report-demo.html and docs/report-demo.png: the `edgerun compare` report of a lab run
over three devices and three artifacts, to show and check the report's layout.

The numbers are SYNTHETIC (a fake runtime with set decode speeds, see tests/bench_fake.py), not
measurements: the report's layout is what this shows. Run from the repository root:

    .venv/bin/python docs/report_demo.py
    chromium --headless --hide-scrollbars --screenshot=docs/report-demo-1400.png \\
        --window-size=1400,2800 docs/report-demo.html
    sed 's|<details><summary>1</summary>|<details open><summary>1</summary>|' \\
        docs/report-demo.html > /tmp/open.html   # row 1's details opened, as a reader would
    chromium --headless --hide-scrollbars --screenshot=docs/report-demo-900.png \\
        --window-size=900,2580 /tmp/open.html
"""

from __future__ import annotations

import copy
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# (device, profile, cpu, cores, decode speed factor, J/token factor)
DEVICES = [
    ("x86-desktop", "x86-avx2", "AMD Ryzen 7 7700", 8, 1.0, 1.0),
    ("raspberry-pi-5", "rpi5", "Cortex-A76", 4, 0.31, 0.42),
    ("jetson-orin-nano", "jetson-orin", "Cortex-A78AE", 6, 0.55, 0.6),
]
# (artifact, seconds per decoded token on the fastest device, size bytes, mean KL, PPL ratio)
ARTIFACTS = [
    ("onnx-int4", 0.011, 118 << 20, 0.148, 1.031),
    ("gguf-q4_k_m", 0.0105, 105 << 20, 0.080, 1.006),
    ("gguf-q8_0", 0.016, 145 << 20, 0.004, 1.001),
]


def _bench(tmp: Path) -> dict:
    from click.testing import CliRunner

    from edgerun.cli import cli
    from tests.bench_fake import make_artifact

    arts = [make_artifact(tmp / n, n, decode_s=s) for n, s, *_ in ARTIFACTS]
    out = tmp / "one.json"
    args = ["bench", *map(str, arts), "--loader", "tests.bench_fake:load", "--idle-seconds", "0"]
    args += ["--reps", "3", "--warmup", "0", "--gen-tokens", "16", "--prompt-tokens", "32,128"]
    result = CliRunner().invoke(cli, [*args, "--assume-watts", "12", "--json", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def _device_run(run: dict, device: tuple, day: int) -> dict:
    name, profile, cpu, cores, speed, joules = device
    run = copy.deepcopy(run)
    run["device"].update(name=name, cpu_model=cpu, physical_cores=cores)
    run["device"]["profile"] = {"id": profile}
    run["created"] = f"2026-12-0{day}T10:00:00Z"
    run["lab"] = {"device": name, "attempts": 1, "shipped": {}, "status": "ok", "reason": None}
    for art, (_, _, size, kl, ppl) in zip(run["artifacts"], ARTIFACTS, strict=True):
        art["profile_id"] = profile
        art["size_bytes"] = size
        art["validation"].update(mean_kl=kl, ppl_ratio=ppl)
        run["lab"]["shipped"][art["name"]] = 0 if name == "x86-desktop" else size
        for s in art["summary"]["by_prompt"].values():
            for key, scale in (("decode_tok_s", speed), ("decode_j_per_token", 1 / joules)):
                for part in ("median", "min", "max", "stdev"):
                    if s.get(key, {}).get(part) is not None:
                        s[key][part] *= scale
    if name == "raspberry-pi-5":
        run["libraries"]["onnxruntime"] = "1.22.0"  # the skew the versions line shows
    return run


def main() -> None:
    """Write the demo results, the HTML report and the PNG into docs/."""
    sys.path.insert(0, str(ROOT))
    os.environ["PYTHONPATH"] = str(ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["EDGERUN_HOME"] = str(Path(tmp) / "home")
        data = _bench(Path(tmp))
        base = data["runs"][0]
        data["runs"] = [_device_run(base, d, 6 + i // 2) for i, d in enumerate(DEVICES)]
        lab = Path(tmp) / "lab.json"
        lab.write_text(json.dumps(data))
        from click.testing import CliRunner

        from edgerun.cli import cli

        docs = ROOT / "docs"
        args = ["compare", str(lab), "--html", str(docs / "report-demo.html")]
        args += ["--plot", str(docs / "report-demo.png")]
        for name in ("report-demo.html", "report-demo.png"):
            (docs / name).unlink(missing_ok=True)
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        print(result.output)


if __name__ == "__main__":
    main()
