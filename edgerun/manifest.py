"""The artifact manifest `edgerun.json`: schema, reading, writing and verification.

Written by the exporters, read by the runtime, `info`, `verify` and `bench`. Lean: no heavy imports.

Schema (version 1)::

    {
      "schema_version": 1,
      "format": "onnx-int4",            # the export format name, also the artifact dir name
      "family": "onnx" | "gguf",
      "precision": "int4",              # fp32 | fp16 | bf16 | int8 | int4 | q4_k_m | ...
      "quant": {...} | null,            # block_size, symmetric, accuracy_level, algorithm, mode ...
      "builder": "optimum" | "genai" | "gguf-py",
      "model_file": "model.onnx",       # main file, relative to the artifact dir
      "source": {"spec", "kind", "path", "revision", "gguf_sha256", "weights_sha256"},
      "architecture": "LlamaForCausalLM", "model_type": "llama", "context_length": 2048,
      "files": [{"name", "bytes", "sha256"}],
      "libraries": {"edgerun": "0.1.0", "onnxruntime": "...", ...},
      "export": {"wall_s": 12.3, "peak_rss_bytes": 123, "created": "2026-11-23T18:00:00Z"},
      "onnx": {"opset": 17, "ir_version": 8} ,     # ONNX only
      "validation": {"ppl_ref", "ppl", "ppl_ratio", "mean_kl", "top1_agreement", "tokens",
                     "eval_text_sha256", "thresholds", "passed"} | null
    }
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgerun.errors import EdgerunError
from edgerun.home import atomic_write_json

MANIFEST_NAME = "edgerun.json"
SCHEMA_VERSION = 1


def read_manifest(artifact_dir: Path) -> dict[str, Any]:
    """Read and check an artifact's manifest; raise EdgerunError if missing, corrupt or too new."""
    path = Path(artifact_dir) / MANIFEST_NAME
    if not path.is_file():
        raise EdgerunError(
            f"{artifact_dir} is not an edgerun artifact (no {MANIFEST_NAME})",
            "pass a directory written by `edgerun export`, or a bare .gguf / .onnx file",
        )
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise EdgerunError(
            f"{path} is not valid JSON ({exc.msg})", "re-export the artifact"
        ) from exc
    version = data.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise EdgerunError(
            f"{path} has manifest schema version {version}; this edgerun reads up to {SCHEMA_VERSION}",
            "upgrade edgerun: pip install -U edgerun",
        )
    for key in ("format", "family", "model_file"):
        if key not in data:
            raise EdgerunError(f"{path} lacks the key '{key}'", "re-export the artifact")
    return data


def write_manifest(artifact_dir: Path, manifest: dict[str, Any]) -> Path:
    """Write `manifest` (schema_version added) atomically into `artifact_dir`."""
    data = {"schema_version": SCHEMA_VERSION, **manifest}
    path = Path(artifact_dir) / MANIFEST_NAME
    atomic_write_json(path, data)
    return path


def file_entries(artifact_dir: Path) -> list[dict[str, Any]]:
    """[{name, bytes, sha256}] for every file in the artifact except the manifest itself."""
    from edgerun.sources import sha256_file

    root = Path(artifact_dir)
    return [
        {"name": str(f.relative_to(root)), "bytes": f.stat().st_size, "sha256": sha256_file(f)}
        for f in sorted(root.rglob("*"))
        if f.is_file() and f.name != MANIFEST_NAME
    ]


@dataclass
class VerifyReport:
    """What `edgerun verify` found: files whose hash or size changed, and missing / extra files."""

    ok: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not (self.changed or self.missing or self.extra)


def verify(artifact_dir: Path) -> VerifyReport:
    """Re-hash every file listed in the manifest and compare with what is on disk."""
    manifest = read_manifest(artifact_dir)
    recorded = {f["name"]: f for f in manifest.get("files", [])}
    actual = {f["name"]: f for f in file_entries(artifact_dir)}
    report = VerifyReport()
    for name, entry in recorded.items():
        now = actual.get(name)
        if now is None:
            report.missing.append(name)
        elif now["sha256"] != entry["sha256"] or now["bytes"] != entry["bytes"]:
            report.changed.append(name)
        else:
            report.ok.append(name)
    report.extra = sorted(set(actual) - set(recorded))
    return report
