"""The bench harness on a fake runtime: metrics from controlled timings, interleaving, energy,
worker isolation and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgerun.bench.harness import run_bench
from edgerun.bench.metrics import rep_metrics, stats
from edgerun.bench.workload import Workload, synthetic_prompt
from edgerun.cli import cli
from edgerun.core.errors import EdgerunError
from edgerun.power.account import EnergyAccount
from edgerun.power.registry import CHOICES, Selection, select
from tests.bench_fake import Tokenizer, make_artifact

ROOT = Path(__file__).resolve().parent.parent
LOADER = "tests.bench_fake:load"


@pytest.fixture(autouse=True)
def importable_fake(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker subprocess imports the fake loader from this checkout."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))


def test_rep_metrics_from_known_timestamps() -> None:
    m = rep_metrics(0.0, [0.5, 0.6, 0.7, 0.9], prompt_tokens=100)
    assert m["ttft_s"] == 0.5 and m["prefill_tok_s"] == 200.0
    assert m["decode_tok_s"] == pytest.approx(3 / 0.4)
    assert m["latency_ms"]["p50"] == pytest.approx(100.0)
    assert m["latency_ms"]["p90"] == pytest.approx(180.0)
    assert m["latency_ms"]["p99"] == pytest.approx(198.0)
    assert m["gen_tokens"] == 4


def test_stats() -> None:
    assert stats([3.0, 1.0, None, 2.0]) == {
        "median": 2.0,
        "min": 1.0,
        "max": 3.0,
        "stdev": 1.0,
        "n": 3,
    }
    assert stats([None]) is None


def test_synthetic_prompt_is_exact_and_seeded() -> None:
    tok = Tokenizer()
    a = synthetic_prompt(tok, 517, seed=0)
    assert len(a) == 517 and a == synthetic_prompt(tok, 517, seed=0)
    assert a != synthetic_prompt(tok, 517, seed=1)
    assert len(synthetic_prompt(tok, 1)) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reps": 0}, "--reps must be at least 1, got 0"),
        ({"prompt_tokens": []}, "--prompt-tokens must be positive"),
        ({"gen_tokens": 1}, "--gen-tokens must be at least 2"),
        ({"threads": 0}, "--threads must be at least 1"),
    ],
)
def test_workload_rejects_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(EdgerunError, match=message):
        Workload(**kwargs)


def test_workload_context_check() -> None:
    w = Workload(prompt_tokens=[128, 512], gen_tokens=128)
    w.check_context(1024, "a")
    with pytest.raises(EdgerunError) as err:
        w.check_context(600, "out/x")
    assert err.value.message == (
        "--prompt-tokens 512 + --gen-tokens 128 = 640 tokens exceed the context of 600 for out/x"
    )
    with pytest.raises(EdgerunError, match="--ctx 2048 is larger than a's context of 1024"):
        Workload(ctx=2048).check_context(1024, "a")


def _two(tmp_path: Path) -> list[Path]:
    return [
        make_artifact(tmp_path / "a", "fake-a", decode_s=0.004, prefill_s_per_token=1e-4),
        make_artifact(tmp_path / "b", "fake-b", decode_s=0.008, prefill_s_per_token=2e-4),
    ]


def test_harness_metrics_interleaving_and_energy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("EDGERUN_FAKE_LOG", str(log))
    workload = Workload(prompt_tokens=[32, 64], gen_tokens=12, reps=3, warmup=1)
    energy = EnergyAccount(select("cmd:echo 5"))
    run = run_bench(_two(tmp_path), workload, energy, idle_seconds=0.0, loader=LOADER)

    calls = [json.loads(line) for line in log.read_text().splitlines()]
    gens = [(c["model"], c["what"]) for c in calls if c["what"].startswith("generate")]
    warm = [
        ("fake-a", "generate 32"),
        ("fake-a", "generate 64"),
        ("fake-b", "generate 32"),
        ("fake-b", "generate 64"),
    ]
    assert gens == warm + warm * 3  # warmups, then A B A B A B
    assert run["order"] == [[0, 0], [0, 1], [1, 0], [1, 1], [2, 0], [2, 1]]

    a, b = run["artifacts"]
    assert (a["name"], a["backend"], a["providers"], a["threads"]) == (
        "fake-a",
        "fake",
        ["FakeCPU"],
        2,
    )
    assert a["validation"]["ppl_ratio"] == 1.05 and a["size_bytes"] == 1000
    assert len(a["reps"]) == 6 and {r["prompt_tokens"] for r in a["reps"]} == {32, 64}
    for art, decode_s, per_tok in ((a, 0.004, 1e-4), (b, 0.008, 2e-4)):
        for rep in art["reps"]:
            assert rep["gen_tokens"] == 12
            assert rep["ttft_s"] >= per_tok * rep["prompt_tokens"]  # sleep never returns early
            assert rep["latency_ms"]["p50"] >= decode_s * 1e3
            assert 0.1 / decode_s < rep["decode_tok_s"] <= 1 / decode_s  # loose: shared CPU
            mem = rep["memory"]
            assert mem["peak_rss"] >= mem["rss"] > 8 * 2**20  # the fake holds 8 MiB of ballast
            assert mem["anonymous"] + mem["file_backed"] > 0 and mem["uss"] > 0
            e = rep["energy"]
            assert (e["meter"], e["method"], e["scope"]) == ("cmd", "integrated", "system")
            assert e["decode"]["joules"] == pytest.approx(5.0 * rep["decode_s"], rel=1e-6)
            assert e["decode"]["j_per_token"] == pytest.approx(5.0 * rep["decode_s"] / 11, rel=1e-6)
        s = art["summary"]["by_prompt"]["64"]
        assert s["decode_tok_s"]["n"] == 3
        assert s["decode_tok_s"]["min"] <= s["decode_tok_s"]["median"] <= s["decode_tok_s"]["max"]
    assert run["power"]["available"] is True and run["power"]["meter"] == "cmd"


def test_harness_meter_unplugged_mid_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reading = tmp_path / "watts"
    reading.write_text("7\n")
    monkeypatch.setenv("EDGERUN_FAKE_UNPLUG", str(reading))  # removed on the 3rd generation
    workload = Workload(prompt_tokens=[16], gen_tokens=4, reps=3, warmup=0)
    energy = EnergyAccount(select(f"cmd:cat {reading}"))
    run = run_bench(_two(tmp_path)[:1], workload, energy, idle_seconds=0.0, loader=LOADER)
    reps = run["artifacts"][0]["reps"]
    assert reps[0]["energy"]["decode"]["joules"] == pytest.approx(
        7.0 * reps[0]["decode_s"], rel=1e-6
    )
    assert reps[2]["energy"]["decode"]["joules"] is None
    assert reps[2]["energy"]["decode"]["reason"].startswith(
        "the meter stopped working during the run"
    )
    assert "exited with status 1" in run["power"]["error"]


def test_harness_without_meter_records_null_with_reason(tmp_path: Path) -> None:
    workload = Workload(prompt_tokens=[8], gen_tokens=3, reps=1, warmup=0)
    energy = EnergyAccount(
        Selection(None, "no power meter found on this machine", "see edgerun power")
    )
    run = run_bench(_two(tmp_path)[:1], workload, energy, idle_seconds=0.0, loader=LOADER)
    rep = run["artifacts"][0]["reps"][0]
    assert rep["energy"] is None and rep["energy_reason"] == "no power meter found on this machine"
    assert run["power"] == {
        "available": False,
        "estimate": False,
        "reason": "no power meter found on this machine",
        "hint": "see edgerun power",
        "tried": None,
    }


def test_worker_failure_becomes_one_line_error(tmp_path: Path) -> None:
    art = make_artifact(tmp_path / "bad", "fake-bad", fail="generate")
    with pytest.raises(EdgerunError, match="bad: RuntimeError: fake backend exploded"):
        run_bench(
            [art],
            Workload(prompt_tokens=[4], gen_tokens=2, reps=1, warmup=0),
            EnergyAccount(Selection(None, "off")),
            idle_seconds=0.0,
            loader=LOADER,
        )


def _bench(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["bench", "--loader", LOADER, "--idle-seconds", "0", *args])
    return result.exit_code, result.output


def test_cli_bench_writes_json_and_refuses_to_overwrite(tmp_path: Path) -> None:
    a, _ = _two(tmp_path)
    out = tmp_path / "r.json"
    args = [
        str(a),
        "--reps",
        "1",
        "--warmup",
        "0",
        "--gen-tokens",
        "3",
        "--prompt-tokens",
        "8",
        "--power",
        "none",
        "--json",
        str(out),
        "--md",
        str(tmp_path / "r.md"),
    ]
    code, text = _bench(*args)
    assert code == 0, text
    assert "fake-a" in text
    assert "energy: null: power measurement was turned off (--power none)" in text
    data = json.loads(out.read_text())
    assert (
        data["schema"] == "edgerun-bench" and data["schema_version"] == 1 and len(data["runs"]) == 1
    )
    assert (tmp_path / "r.md").read_text().startswith("| device | profile | artifact |")
    code, text = _bench(*args)
    assert code == 2
    assert (
        text
        == f"error: {out} already exists (pass --append to add this run to it, or choose a new name)\n"
    )
    code, text = _bench(*args, "--append")
    assert code == 0, text
    assert len(json.loads(out.read_text())["runs"]) == 2
    assert (tmp_path / "r.md").read_text().count("| fake-a |") == 2


def test_cli_bench_prints_a_llama_bench_line(tmp_path: Path) -> None:
    """One line per artifact as llama-bench sums a run up: prefill per prompt length, decode
    after the shortest prompt, each median ± stdev."""
    import re

    a, _ = _two(tmp_path)
    args = ["--reps", "2", "--warmup", "0", "--gen-tokens", "3", "--prompt-tokens", "16,8"]
    code, text = _bench(str(a), *args, "--power", "none")
    assert code == 0, text
    lines = [line for line in text.splitlines() if line.startswith("fake-a (")]
    number = r"[\d.]+ ± [\d.]+"
    assert len(lines) == 1 and re.fullmatch(
        rf"fake-a \(\S+, \d+ threads\): pp8 {number} \| pp16 {number} \| tg3 {number} tok/s",
        lines[0],
    ), lines


def test_cli_bench_assume_watts_is_labelled(tmp_path: Path) -> None:
    a, _ = _two(tmp_path)
    code, text = _bench(
        str(a),
        "--reps",
        "1",
        "--warmup",
        "0",
        "--gen-tokens",
        "3",
        "--prompt-tokens",
        "8",
        "--assume-watts",
        "6",
        "--json",
        str(tmp_path / "r.json"),
    )
    assert code == 0, text
    assert "energy: ESTIMATE, assumed 6 W (--assume-watts): not measured" in text
    rep = json.loads((tmp_path / "r.json").read_text())["runs"][0]["artifacts"][0]["reps"][0]
    assert rep["energy"]["method"] == "estimate"
    assert rep["energy"]["decode"]["joules"] == pytest.approx(6.0 * rep["decode_s"])


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--reps", "0"], "error: --reps must be at least 1, got 0 (use --reps 5)\n"),
        (
            ["--power", "wattmeter"],
            f"error: unknown power meter 'wattmeter' (choose one of: {CHOICES})\n",
        ),
        (
            ["--prompt-tokens", "1000"],
            "error: --prompt-tokens 1000 + --gen-tokens 128 = 1128 tokens exceed "
            "the context of 1024 for {a} (use prompts of at most 896 tokens)\n",
        ),
    ],
)
def test_cli_bench_bad_input(tmp_path: Path, args: list[str], expected: str) -> None:
    a, _ = _two(tmp_path)
    code, text = _bench(str(a), *args)
    assert code == 2
    assert text == expected.format(a=a)


def test_cli_bench_not_an_artifact(tmp_path: Path) -> None:
    code, text = _bench(str(tmp_path), "--power", "none")
    assert code == 2
    assert text.startswith(f"error: {tmp_path} is not an edgerun artifact (no edgerun.json)")


def test_both_ends_of_the_worker_protocol_live_in_the_worker_module(tmp_path: Path) -> None:
    """The parent's end (WorkerProcess, load_worker) sits beside the child's (Worker) and drives a
    real worker subprocess through load and run."""
    from edgerun.bench.worker import WorkerProcess, load_worker

    worker = WorkerProcess(_two(tmp_path)[0])
    try:
        facts = load_worker(worker, Workload(prompt_tokens=[16], gen_tokens=5), LOADER)
        assert facts["load_s"] >= 0 and facts["memory_after_load"]
        reply = worker.call(op="run", prompt_tokens=16, gen_tokens=5, seed=0)
        assert len(reply["token_times"]) == 5 and reply["ok"]
    finally:
        worker.close()
    assert worker.proc.returncode == 0


def test_a_bench_run_detects_the_machine_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parent resolves the profile once and passes it, with why, to every worker: no worker
    detects again (each logs a detection it makes: tests/bench_fake.py)."""
    import edgerun.bench
    import edgerun.device.detect as detect_module
    import edgerun.device.resolve as resolve

    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("EDGERUN_FAKE_LOG", str(log))
    in_parent: list[str] = []
    real = detect_module.detect

    def counted(*args: object, **kwargs: object) -> detect_module.Detection:
        in_parent.append("detect")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    for module in (detect_module, resolve):
        monkeypatch.setattr(module, "detect", counted)
    artifacts = [*_two(tmp_path), make_artifact(tmp_path / "c", "fake-c")]
    run = edgerun.bench.run(
        artifacts, prompt_tokens=[8], gen_tokens=2, reps=1, warmup=0, power="none",
        idle_seconds=0.0, loader=LOADER,
    )  # fmt: skip
    in_workers = [c for c in map(json.loads, log.read_text().splitlines()) if c["what"] == "detect"]
    assert (len(in_parent), len(in_workers)) == (1, 0)
    detected = run["device"]["profile"]
    assert detected["how"] == "detected" and detected["reasons"] is not None
    for entry in run["artifacts"]:
        assert entry["profile_id"] == detected["id"]
        assert entry["profile_reason"].startswith("auto-detected")
