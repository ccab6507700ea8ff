"""A fake runtime for bench tests: sleeps known durations, logs its calls, needs no model.

Its timings come from the artifact's manifest ("fake" block), so each test artifact can differ:
prefill_s_per_token x prompt length before the first token, decode_s between tokens
($EDGERUN_FAKE_DECODE_S overrides decode_s, so one lab worker can be slower than the others;
$EDGERUN_FAKE_BUSY_S makes load keep a CPU, and its GIL, busy that long). Its loader resolves
its profile as edgerun.load does (detecting the machine when given none) and logs each detection."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgerun.core.manifest import read_manifest, write_manifest
from edgerun.device.resolve import Resolved, resolve_profile


def make_artifact(
    path: Path,
    name: str,
    decode_s: float = 0.004,
    prefill_s_per_token: float = 1e-4,
    load_s: float = 0.02,
    context_length: int = 1024,
    fail: str | None = None,
) -> Path:
    """Write a fake artifact dir with a manifest the harness accepts."""
    path.mkdir(parents=True)
    (path / "model.bin").write_bytes(b"\0" * 1000)
    write_manifest(
        path,
        {
            "format": name,
            "family": "onnx",
            "precision": "int4",
            "model_file": "model.bin",
            "context_length": context_length,
            "files": [{"name": "model.bin", "bytes": 1000, "sha256": "0" * 64}],
            "validation": {
                "ppl_ref": 10.0,
                "ppl": 10.5,
                "ppl_ratio": 1.05,
                "mean_kl": 0.02,
                "top1_agreement": 0.93,
                "passed": True,
            },
            "fake": {
                "decode_s": decode_s,
                "prefill_s_per_token": prefill_s_per_token,
                "load_s": load_s,
                "fail": fail,
            },
        },
    )
    return path


class Tokenizer:
    def encode(self, text: str) -> list[int]:
        return [ord(c) % 251 + 3 for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids)


@dataclass
class Chunk:
    token_id: int
    text: str


@dataclass
class Info:
    data: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return self.data


def _log(name: str, what: str) -> None:
    log = os.environ.get("EDGERUN_FAKE_LOG")
    if log:
        with open(log, "a") as fh:
            fh.write(json.dumps({"model": name, "what": what}) + "\n")


class FakeModel:
    def __init__(self, path: str, profile: Resolved, threads: int | None) -> None:
        self.manifest = read_manifest(Path(path))
        self.fake = dict(self.manifest["fake"])
        slow = os.environ.get("EDGERUN_FAKE_DECODE_S")  # one lab device slower than the others
        if slow:
            self.fake["decode_s"] = float(slow)
        self.name = self.manifest["format"]
        self.tokenizer = Tokenizer()
        self.context_length = self.manifest["context_length"]
        self.info = Info(
            {
                "backend": "fake",
                "providers": ["FakeCPU"],
                "threads": threads or 2,
                "profile_id": profile.profile.id if profile.profile else None,
                "profile_reason": profile.reason,
                "manifest": self.manifest,
            }
        )
        self.ballast = bytearray(8 * 1024 * 1024)  # 8 MiB of anonymous memory, touched
        for i in range(0, len(self.ballast), 4096):
            self.ballast[i] = 1

    def _log(self, what: str) -> None:
        _log(self.name, what)

    def generate(
        self,
        prompt_ids: list[int],
        max_tokens: int,
        temperature: float = 0.0,
        ignore_eos: bool = False,
    ) -> Iterator[Chunk]:
        assert temperature == 0.0 and ignore_eos
        self._log(f"generate {len(prompt_ids)}")
        self.calls = getattr(self, "calls", 0) + 1
        unplug = os.environ.get("EDGERUN_FAKE_UNPLUG")  # a power meter's file, removed mid-run
        if unplug and self.calls == 3 and os.path.exists(unplug):
            os.unlink(unplug)
        if self.fake.get("fail") == "generate":
            raise RuntimeError("fake backend exploded")
        time.sleep(self.fake["prefill_s_per_token"] * len(prompt_ids))
        for i in range(max_tokens):
            if i:
                time.sleep(self.fake["decode_s"])
            yield Chunk(i, "x")

    def close(self) -> None:
        self._log("close")


def hold_gil(seconds: float) -> None:
    """Keep a CPU and the GIL for about `seconds` in one C call (a busy device), sized by a
    short calibration run."""
    if seconds <= 0:
        return
    start = time.perf_counter()
    sum(range(1_000_000))
    per_million = max(time.perf_counter() - start, 1e-4)
    sum(range(int(seconds / per_million * 1_000_000)))


def load(
    path: str,
    profile: str | Resolved | None = None,
    threads: int | None = None,
    context: int | None = None,
) -> FakeModel:
    manifest = read_manifest(Path(path))
    if profile is None:  # resolved as edgerun.load resolves it: by detecting the machine
        _log(manifest["format"], "detect")
    resolved = resolve_profile(profile)
    if manifest["fake"].get("fail") == "load":
        raise RuntimeError("fake load failure")
    time.sleep(manifest["fake"]["load_s"])
    hold_gil(float(os.environ.get("EDGERUN_FAKE_BUSY_S") or 0))
    print("noise on stdout from a chatty library")  # must not break the protocol
    return FakeModel(path, resolved, threads)
