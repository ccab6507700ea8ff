"""Issue 13, item 7: SIGTERM cleans up like Ctrl-C, stale temporary directories are swept at
the next start, and a cache entry whose files are gone is damaged (`pull --refresh`), not cached."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgerun.cli import cli
from tests.pull_fakes import fake_gguf

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]

# Loaded at interpreter start through PYTHONPATH: the dequantize step writes a partial file,
# says it is ready, then waits long enough to be killed.
SLOW_DEQUANTIZE = """
import os, time
from pathlib import Path
import edgerun.sources.gguf_source as g

def slow(path, out):
    (Path(out) / "model.safetensors").write_bytes(b"partial")
    Path(os.environ["EDGERUN_TEST_READY"]).write_text("ready")
    time.sleep(120)

g.dequantize_gguf = slow
"""


def _start_slow_pull(tmp_path: Path, edgerun_home: Path) -> tuple[subprocess.Popen[str], Path]:
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(SLOW_DEQUANTIZE)
    ready = tmp_path / "ready"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(inject), str(ROOT)]),
        "EDGERUN_HOME": str(edgerun_home),
        "EDGERUN_TEST_READY": str(ready),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgerun", "pull", str(fake_gguf(tmp_path))],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"pull never reached the dequantize step: {proc.communicate()}")
        time.sleep(0.05)
    return proc, edgerun_home / "models"


def test_sigterm_during_pull_removes_the_partial_entry(tmp_path: Path, edgerun_home: Path) -> None:
    proc, models = _start_slow_pull(tmp_path, edgerun_home)
    assert [p.name for p in models.iterdir() if ".tmp-" in p.name]  # the partial entry exists
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("pull did not stop within 30 s of SIGTERM")
    assert proc.returncode == 128 + signal.SIGTERM
    assert err == "Stopped by SIGTERM: nothing partial was kept.\n"
    assert list(models.iterdir()) == []


def test_sigkilled_pull_is_swept_at_the_next_start(
    tmp_path: Path, edgerun_home: Path, request: pytest.FixtureRequest
) -> None:
    proc, models = _start_slow_pull(tmp_path, edgerun_home)
    proc.kill()  # SIGKILL: no cleanup can run
    proc.communicate(timeout=30)
    (left,) = models.iterdir()
    assert f".{proc.pid}." in left.name  # the owner is recorded in the name
    request.getfixturevalue("fake_dequantize")  # only now: the killed pull used the real one
    result = runner.invoke(cli, ["pull", str(fake_gguf(tmp_path, "other"))])
    assert result.exit_code == 0, result.output
    assert [p.name.startswith("gguf--other--") for p in models.iterdir()] == [True]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    return proc.pid


def test_sweep_rules(tmp_path: Path) -> None:
    from edgerun.core.leftovers import owner_tag, sweep_stale

    host = owner_tag().split(".")[0]
    other = "000000" if host != "000000" else "111111"
    dead = _dead_pid()
    names = {
        f".model.tmp-{host}.{dead}.abcdef12": "gone",  # owner gone
        f".model.old-{host}.{dead}.abcdef12": "gone",
        f".edgerun-scratch-{host}.{dead}.x1y2z3_a": "gone",
        f".model.tmp-{owner_tag()}.abcdef12": "kept",  # this process
        f".model.tmp-{other}.{dead}.abcdef12": "kept",  # another host: only age counts
        ".model.tmp-abcdef12": "kept",  # no owner recorded, fresh
        ".model.tmp-abcdef13": "old",  # no owner recorded, two days untouched
        ".edgerun-scratch-k2j3h4g5": "old",
        ".edgerun-scratch-k2j3h4g6": "kept",
        ".git": "kept",  # not edgerun's
        "model.tmp-abcdef12": "kept",
        ".model.tmp-abc": "kept",
    }
    two_days_ago = time.time() - 2 * 86400
    for name, fate in names.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "part").write_bytes(b"x")
        if fate == "old":
            os.utime(tmp_path / name / "part", (two_days_ago, two_days_ago))
            os.utime(tmp_path / name, (two_days_ago, two_days_ago))
    removed = sweep_stale(tmp_path)
    expected = {n for n, fate in names.items() if fate != "kept"}
    assert {p.name for p in removed} == expected
    assert {p.name for p in tmp_path.iterdir()} == set(names) - expected


def test_recent_write_inside_keeps_an_old_directory(tmp_path: Path) -> None:
    from edgerun.core.leftovers import sweep_stale

    busy = tmp_path / ".model.tmp-abcdef12"
    busy.mkdir()
    long_ago = time.time() - 3 * 86400
    os.utime(busy, (long_ago, long_ago))
    (busy / "model.safetensors").write_bytes(b"still downloading")
    assert sweep_stale(tmp_path) == [] and busy.is_dir()


def test_sigterm_becomes_terminated_only_inside_the_block() -> None:
    from edgerun.core.leftovers import Terminated, terminate_as_interrupt

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated) as info, terminate_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
    assert info.value.signum == signal.SIGTERM and isinstance(info.value, KeyboardInterrupt)
    assert signal.getsignal(signal.SIGTERM) == before


def _pulled_entry(tmp_path: Path) -> tuple[Path, Path]:
    src = fake_gguf(tmp_path)
    result = runner.invoke(cli, ["pull", str(src)])
    assert result.exit_code == 0, result.output
    return src, Path(result.output.strip().splitlines()[-1])


@pytest.mark.parametrize("damage", ["delete", "truncate", "delete-old-marker", "no-marker"])
def test_damaged_cache_entry_is_reported_then_refreshed(
    tmp_path: Path, tiny_llama: Path, fake_dequantize: list[Path], damage: str
) -> None:
    src, entry = _pulled_entry(tmp_path)
    weights, marker = entry / "model.safetensors", entry / ".edgerun-source.json"
    problem = "model.safetensors is missing"
    if damage == "truncate":
        size = weights.stat().st_size
        weights.write_bytes(weights.read_bytes()[:100])
        problem = f"model.safetensors has 100 bytes, {size} when it was pulled"
    elif damage == "delete-old-marker":  # an entry pulled before the marker listed its files
        meta = json.loads(marker.read_text())
        del meta["files"]
        marker.write_text(json.dumps(meta))
        weights.unlink()
        problem = "it has no weights (model.safetensors or pytorch_model.bin)"
    elif damage == "no-marker":
        marker.unlink()
        problem = "(it has no .edgerun-source.json)"
    else:
        weights.unlink()
    result = runner.invoke(cli, ["pull", str(src)])
    assert result.exit_code == 2
    separator = " " if problem.startswith("(") else ": "
    assert result.output == (
        f"error: cache entry {entry} is damaged{separator}{problem} "
        f"(rebuild it with: edgerun pull --refresh {src.resolve()})\n"
    )
    result = runner.invoke(cli, ["pull", "--refresh", str(src)])
    assert result.exit_code == 0, result.output
    assert (
        len(fake_dequantize) == 2
        and weights.stat().st_size == (tiny_llama / weights.name).stat().st_size
    )
    assert sorted(p.name for p in entry.parent.iterdir()) == [entry.name]  # no .old-/.tmp- left
    assert f"{src.resolve()}: cached at {entry}\n" in runner.invoke(cli, ["pull", str(src)]).output
