"""The files every row runs: built once under benchmarks/work/<model>/<label>/ and reused.

Each build is the command a user would type (``edgerun export``, ``optimum-cli export onnx`` +
ORT's MatMulNBits quantizer, onnxruntime-genai's builder), run as a measured child process with
its output in benchmarks/work/logs/. A build lands in a temporary sibling first and is renamed into
place when complete, so an interrupted build is never reused. A build that fails makes its rows
skipped, with the failing line of its log as the reason.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.proc import ProcResult, failure_line, run_measured
from edgerun.core.home import atomic_dir, home

PY = sys.executable
INT4_BLOCK, INT4_ACCURACY = 32, 4


class Skip(Exception):  # noqa: N818 - a reason to skip, not an error
    """A row cannot run; the message says why."""


def edgerun_export_cmd(src: Path, fmt: str, out: Path, extra: list[str] | None = None) -> list[str]:
    return [PY, "-m", "edgerun", "export", str(src), "-f", fmt, "-o", str(out), *(extra or [])]


def optimum_fp32_cmd(src: Path, out: Path) -> list[str]:
    cli = [PY, "-m", "optimum.commands.optimum_cli", "export", "onnx"]
    return [*cli, "--model", str(src), "--task", "text-generation-with-past", str(out)]


def ort_int4_cmd(fp32_dir: Path, out: Path) -> list[str]:
    args = ["--block-size", str(INT4_BLOCK), "--accuracy-level", str(INT4_ACCURACY)]
    return [PY, "-m", "benchmarks.peer_exports", "ort-int4", str(fp32_dir), str(out), *args]


def genai_int4_cmd(src: Path, out: Path, cache: Path) -> list[str]:
    opts = [f"int4_block_size={INT4_BLOCK}", f"int4_accuracy_level={INT4_ACCURACY}"]
    builder = [PY, "-m", "onnxruntime_genai.models.builder", "-i", str(src), "-o", str(out)]
    return [*builder, "-p", "int4", "-e", "cpu", "-c", str(cache), "--extra_options", *opts]


def edgerun_can_export() -> str | None:
    """Why `edgerun export` cannot run in this checkout, or None when it can."""
    from edgerun.cli import COMMANDS

    return None if "export" in COMMANDS else "edgerun has no 'export' command in this checkout"


def find_manifest_dir(root: Path) -> Path | None:
    """The artifact directory (holding edgerun.json) inside `root`, if there is exactly one."""
    found = sorted(p.parent for p in root.rglob("edgerun.json")) if root.is_dir() else []
    return found[0] if len(found) == 1 else None


def model_file(artifact_dir: Path, suffix: str) -> Path:
    """The artifact's single file ending in `suffix` (a GGUF artifact's .gguf)."""
    files = sorted(artifact_dir.glob(f"*{suffix}"))
    if len(files) != 1:
        raise Skip(f"{artifact_dir} holds {len(files)} {suffix} files, expected 1")
    return files[0]


@dataclass
class Prep:
    """Builds (or finds) artifacts for one model. `build`: False only looks in the cache;
    `refresh`: rebuild edgerun's artifacts (the exporters change more often than the peers)."""

    checkpoint: Path
    work: Path
    build: bool = True
    refresh: bool = False
    builds: dict[str, ProcResult] = field(default_factory=dict)
    _done: dict[str, Path | Skip] = field(default_factory=dict)

    def _cached(self, label: str, make: list[list[str]], find: bool = False) -> Path:
        """Run the commands of `make` (with {out} placeholders) into work/<label>, once."""
        if label in self._done:
            hit = self._done[label]
            if isinstance(hit, Skip):
                raise hit
            return hit
        final = self.work / label
        if self.refresh and label.startswith("edgerun/") and final.exists():
            shutil.rmtree(final)
        try:
            if not final.exists():
                self._build(label, final, make)
            path = find_manifest_dir(final) if find else final
            if path is None:
                raise Skip(f"no single edgerun.json under {final}")
        except Skip as skip:
            self._done[label] = skip
            raise
        self._done[label] = path
        return path

    def _build(self, label: str, final: Path, make: list[list[str]]) -> None:
        if not self.build:
            raise Skip(f"{label} is not built yet (run without --no-build)")
        print(f"building {label} (once; cached in {final}) ...", file=sys.stderr, flush=True)
        with atomic_dir(final) as tmp:
            for i, cmd in enumerate(make):
                cmd = [c.replace("{out}", str(tmp / "out")).replace("{tmp}", str(tmp)) for c in cmd]
                log = self.work.parent / "logs" / f"build-{label.replace('/', '-')}-{i}.log"
                result = run_measured(cmd, log)
                self.builds[f"{label}#{i}"] = result
                if result.rc != 0:
                    raise Skip(f"building {label} failed: {failure_line(log)} (log: {log})")

    def edgerun(self, fmt: str, builder: str | None = None) -> Path:
        """edgerun's artifact directory of `fmt` (optionally built by another builder)."""
        reason = edgerun_can_export()
        if reason:
            raise Skip(reason)
        # --force: an artifact that fails the validation gate is still measured; the table
        # shows its validation result next to its speed.
        extra = ["--force", *(["--builder", builder] if builder else [])]
        label = f"edgerun/{fmt}" + (f"-{builder}" if builder else "")
        return self._cached(
            label, [edgerun_export_cmd(self.checkpoint, fmt, Path("{out}"), extra)], True
        )

    def prebuild_edgerun(self, fmts: list[str]) -> None:
        """Export every missing format of `fmts` in ONE `edgerun export` call, so the PyTorch
        reference that validation needs is computed once instead of once per format. Formats the
        call did not produce are skipped with the failing line of its log."""
        if edgerun_can_export() or not self.build:
            return
        labels = {f: f"edgerun/{f}" for f in fmts if f"edgerun/{f}" not in self._done}
        for label in labels.values():
            if self.refresh and (self.work / label).exists():
                shutil.rmtree(self.work / label)
        missing = [f for f, label in labels.items() if not (self.work / label).exists()]
        if not missing:
            return
        batch = self.work / "edgerun" / ".batch"
        shutil.rmtree(batch, ignore_errors=True)
        print(f"building edgerun {','.join(missing)} (once) ...", file=sys.stderr, flush=True)
        log = self.work.parent / "logs" / "build-edgerun-batch.log"
        cmd = edgerun_export_cmd(self.checkpoint, ",".join(missing), batch, ["--force"])
        self.builds["edgerun/batch"] = run_measured(cmd, log)
        for fmt in missing:
            made = find_manifest_dir(batch / fmt) if (batch / fmt).is_dir() else None
            if made is None:
                self._done[labels[fmt]] = Skip(f"exporting {fmt} failed: {failure_line(log)}")
                continue
            final = self.work / labels[fmt]
            final.mkdir(parents=True)
            made.rename(final / fmt)  # complete: the exporter renames each artifact into place
            self._done[labels[fmt]] = final / fmt
        shutil.rmtree(batch, ignore_errors=True)

    def edgerun_gguf(self, fmt: str) -> Path:
        return model_file(self.edgerun(fmt), ".gguf")

    def optimum_fp32(self) -> Path:
        return self._cached("optimum-fp32", [optimum_fp32_cmd(self.checkpoint, Path("{tmp}"))])

    def optimum_int4(self) -> Path:
        fp32 = self.optimum_fp32()
        return self._cached("optimum-int4", [ort_int4_cmd(fp32, Path("{tmp}"))])

    def genai_int4(self) -> Path:
        cmd = genai_int4_cmd(self.checkpoint, Path("{out}"), Path("{tmp}/cache"))
        final = self._cached("genai-int4", [cmd])
        shutil.rmtree(final / "cache", ignore_errors=True)  # the builder's scratch files
        return final / "out"

    def source_gguf(self) -> Path:
        """The GGUF file the checkpoint was pulled from (matched by its recorded sha256)."""
        import json

        marker = self.checkpoint / ".edgerun-source.json"
        digest = json.loads(marker.read_text()).get("gguf_sha256") if marker.is_file() else None
        if not digest:
            raise Skip(f"{self.checkpoint} was not pulled from a GGUF file")
        for path in sorted((home() / "downloads").glob("*.gguf")):
            if hashlib.sha256(path.read_bytes()).hexdigest() == digest:
                return path
        raise Skip(f"the source GGUF (sha256 {digest[:12]}) is not in {home() / 'downloads'}")


def add_artifact_option(parser: Any) -> None:
    """`--artifact FMT=PATH` (repeatable): a benchmark uses this artifact for FMT instead of
    exporting one; read back with given_artifacts."""
    parser.add_argument(
        "--artifact",
        action="append",
        default=[],
        metavar="FMT=PATH",
        help="Use this artifact (directory or .gguf) for FMT instead of exporting one (repeatable).",
    )


def given_artifacts(specs: list[str]) -> dict[str, Path]:
    """The `--artifact FMT=PATH` values as {FMT: PATH}."""
    return {f: Path(p) for f, p in (spec.split("=", 1) for spec in specs)}
