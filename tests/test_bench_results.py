"""Results files: round trip, append, never overwritten, versioned; flat rows and writers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edgerun.bench.memory import vm_hwm_bytes
from edgerun.bench.metrics import summarize_artifact
from edgerun.bench.results import new_run, read_results, rows, to_csv, to_markdown, write_results
from edgerun.core.errors import EdgerunError
from edgerun.device.memory import smaps_rollup


def _run(decode: list[float]) -> dict[str, Any]:
    reps = [
        {
            "rep": i,
            "prompt_tokens": 16,
            "ttft_s": 0.01,
            "prefill_tok_s": 1600.0,
            "decode_tok_s": d,
            "latency_ms": {"p50": 1e3 / d, "p90": 1e3 / d, "p99": 1e3 / d},
            "memory": {
                "peak_rss": 200 * 2**20,
                "uss": None,
                "pss": None,
                "file_backed": 150 * 2**20,
                "anonymous": 50 * 2**20,
            },
            "energy": None,
            "energy_reason": "no power meter found on this machine",
        }
        for i, d in enumerate(decode)
    ]
    art = {
        "name": "onnx-int4",
        "backend": "onnxruntime",
        "providers": ["CPUExecutionProvider"],
        "threads": 2,
        "profile_id": "x86_64-avx2",
        "load_s": 0.5,
        "size_bytes": 3 * 2**20,
        "validation": {"ppl_ratio": 1.02, "mean_kl": 0.01, "top1_agreement": 0.95, "passed": True},
        "reps": reps,
    }
    art["summary"] = summarize_artifact(art)
    body = {
        "workload": {"gen_tokens": 64, "reps": len(decode)},
        "power": {
            "available": False,
            "estimate": False,
            "reason": "no power meter found on this machine",
        },
        "order": [],
        "artifacts": [art],
    }
    return new_run(body, {"name": "box", "cpu_model": "Ryzen"}, {"edgerun": "0.1.0"})


def test_round_trip_and_append(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    first = _run([50.0, 60.0, 55.0])
    write_results(path, first)
    assert read_results(path)["runs"] == [json.loads(json.dumps(first))]
    with pytest.raises(EdgerunError, match="already exists"):
        write_results(path, _run([1.0]))
    write_results(path, _run([10.0, 30.0]), append=True)
    data = read_results(path)
    assert len(data["runs"]) == 2
    table = rows(data)
    assert [r["decode_tok_s"] for r in table] == [55.0, 20.0]  # medians
    r = table[0]
    assert (r["device"], r["artifact"], r["prompt_tokens"], r["energy_method"]) == (
        "box",
        "onnx-int4",
        16,
        "none",
    )
    assert r["peak_rss_mb"] == 200.0 and r["file_backed_mb"] == 150.0 and r["size_mb"] == 3.0
    assert r["energy_reason"] == "no power meter found on this machine"
    assert r["decode_tok_s_stdev"] == pytest.approx(5.0)


def test_writers(tmp_path: Path) -> None:
    table = rows({"runs": [_run([50.0])]})
    md = to_markdown(table).splitlines()
    assert md[0].split(" | ")[:3] == ["| device", "profile", "artifact"]
    assert md[2].startswith(
        "| box | x86_64-avx2 | onnx-int4 | onnxruntime | 2 | 16 | 10.0 | 1600.0 | 50.0 |"
    )
    csv_text = to_csv(table)
    assert csv_text.splitlines()[0].startswith("device,cpu,profile,artifact,backend")
    assert ",50.0," in csv_text.splitlines()[1]


def test_read_results_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(EdgerunError, match="is not valid JSON"):
        read_results(bad)
    with pytest.raises(EdgerunError, match="does not exist"):
        read_results(tmp_path / "missing.json")


def test_smaps_rollup_file_backed_is_rss_minus_anonymous(tmp_path: Path) -> None:
    f = tmp_path / "smaps_rollup"
    f.write_text(
        "55d0c0000000-7ffc00000000 ---p 00000000 00:00 0    [rollup]\n"
        "Rss:              204800 kB\nPss:              150000 kB\nAnonymous:         51200 kB\n"
    )
    assert smaps_rollup(f) == {
        "rss": 204800 * 1024,
        "anonymous": 51200 * 1024,
        "file": 153600 * 1024,
    }
    assert smaps_rollup(tmp_path / "none") is None


def test_vm_hwm(tmp_path: Path) -> None:
    f = tmp_path / "status"
    f.write_text("Name:\tpython\nVmPeak:\t  900000 kB\nVmHWM:\t  123456 kB\nVmRSS:\t  100000 kB\n")
    assert vm_hwm_bytes(f) == 123456 * 1024
    assert vm_hwm_bytes(tmp_path / "none") is None
