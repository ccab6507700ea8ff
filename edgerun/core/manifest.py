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
                     "eval_text_sha256", "thresholds", "passed", "reasons",
                     "kv_decode": {...} | null} | null   # the decode through edgerun.load
      "fidelity": {"reference": "fidelity-reference.npz", "what", "segments", "context_tokens",
                   "scored_tokens", "top_k", "gate", "export": {...}, "bound": {...}} | null
                                        # the compact reference `verify --fidelity` scores against
    }
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgerun.core.errors import EdgerunError
from edgerun.core.home import atomic_write_json
from edgerun.core.integrity import blocks_ok
from edgerun.core.untrusted import (
    check_fields,
    contained,
    is_int,
    is_number,
    json_type,
    read_json_object,
)

MANIFEST_NAME = "edgerun.json"
SCHEMA_VERSION = 1


REEXPORT = "re-export the artifact, or re-copy it from where it was made"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_VALIDATION_NUMBERS = ("ppl_ref", "ppl", "ppl_ratio", "mean_kl", "top1_agreement", "tokens")


def read_manifest(artifact_dir: Path) -> dict[str, Any]:
    """Read and check an artifact's manifest; raise EdgerunError if it is missing, corrupt, of
    the wrong shape, too new, or names a file outside the artifact directory."""
    path = Path(artifact_dir) / MANIFEST_NAME
    if not path.is_file():
        raise EdgerunError(
            f"{artifact_dir} is not an edgerun artifact (no {MANIFEST_NAME})",
            "pass a directory written by `edgerun export`, or a bare .gguf / .onnx file",
        )
    data = read_json_object(path, "re-export the artifact")
    version = data.get("schema_version")
    if (
        not isinstance(version, int)
        or isinstance(version, bool)
        or not 1 <= version <= SCHEMA_VERSION
    ):
        raise EdgerunError(
            f"{path} has manifest schema version {version}; this edgerun reads up to {SCHEMA_VERSION}",
            "upgrade edgerun: pip install -U edgerun",
        )
    for key in ("format", "family", "model_file"):
        if key not in data:
            raise EdgerunError(f"{path} lacks the key '{key}'", "re-export the artifact")
    check_manifest(data, Path(artifact_dir))
    return data


def check_manifest(data: dict[str, Any], artifact_dir: Path) -> None:
    """Raise EdgerunError unless the manifest's fields have the types edgerun reads and every
    file it names lies inside `artifact_dir` (no absolute paths, '..' or escaping symlinks)."""
    where = artifact_dir / MANIFEST_NAME

    def fail(message: str) -> EdgerunError:
        return EdgerunError(f"{where}: {message}", REEXPORT)

    check_fields(data, _TOP, fail)
    contained(artifact_dir, data["model_file"], f"{where}: model_file", REEXPORT)
    for i, entry in enumerate(data.get("files", [])):
        if not isinstance(entry, dict):
            raise fail(f"files[{i}] must be an object, not {json_type(entry)}")
        for key in ("name", "bytes", "sha256"):
            if key not in entry:
                raise fail(f"files[{i}] lacks '{key}'")
        check_fields(entry, _FILE, functools.partial(_fail_at, fail, f"files[{i}]: "))
        if "blocks" in entry and not blocks_ok(entry["blocks"], entry["bytes"]):
            raise fail(f"files[{i}].blocks does not match a file of {entry['bytes']} bytes")
        contained(artifact_dir, entry["name"], f"{where}: files[{i}]", REEXPORT)
    validation = data.get("validation")
    if validation is not None:
        check_fields(validation, _VALIDATION, functools.partial(_fail_at, fail, "validation: "))


def _fail_at(fail: Callable[[str], EdgerunError], prefix: str, message: str) -> EdgerunError:
    return fail(prefix + message)


def _number_or_null(value: Any) -> bool:
    return value is None or is_number(value)


def _str_or_null(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _dict_or_null(value: Any) -> bool:
    return value is None or isinstance(value, dict)


Check = tuple[Callable[[Any], bool], str]
_VALIDATION: dict[str, Check] = {
    **{k: (_number_or_null, "a number or null") for k in _VALIDATION_NUMBERS},
    "passed": (lambda v: v is None or isinstance(v, bool), "true, false or null"),
    "kv_decode": (_dict_or_null, "an object or null"),
}
_TOP: dict[str, Check] = {
    "format": (lambda v: isinstance(v, str) and bool(v), "a non-empty string"),
    "family": (lambda v: isinstance(v, str) and bool(v), "a non-empty string"),
    "model_file": (lambda v: isinstance(v, str), "a string"),
    "precision": (_str_or_null, "a string or null"),
    "builder": (_str_or_null, "a string or null"),
    "architecture": (_str_or_null, "a string or null"),
    "model_type": (_str_or_null, "a string or null"),
    "context_length": (lambda v: v is None or is_int(v, 1), "a positive integer or null"),
    "quant": (_dict_or_null, "an object or null"),
    "source": (_dict_or_null, "an object or null"),
    "libraries": (_dict_or_null, "an object or null"),
    "export": (_dict_or_null, "an object or null"),
    "validation": (_dict_or_null, "an object or null"),
    "fidelity": (_dict_or_null, "an object or null"),
    "files": (lambda v: isinstance(v, list), "an array"),
}
_FILE: dict[str, Check] = {
    "name": (lambda v: isinstance(v, str), "a string"),
    "bytes": (is_int, "a non-negative integer"),
    "sha256": (lambda v: isinstance(v, str) and bool(_HEX64.fullmatch(v)), "64 hex digits"),
}


def write_manifest(artifact_dir: Path, manifest: dict[str, Any]) -> Path:
    """Write `manifest` (schema_version added) atomically into `artifact_dir`."""
    data = {"schema_version": SCHEMA_VERSION, **manifest}
    path = Path(artifact_dir) / MANIFEST_NAME
    atomic_write_json(path, data)
    return path


def file_entries(artifact_dir: Path) -> list[dict[str, Any]]:
    """[{name, bytes, sha256[, blocks]}] for every file in the artifact except the manifest
    itself; large files also get per-block hashes for the sampled check on load
    (see edgerun.core.integrity)."""
    from edgerun.core.integrity import file_entry

    root = Path(artifact_dir)
    return [
        file_entry(f, str(f.relative_to(root)))
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
    """Re-hash every file listed in the manifest and compare with what is on disk: size, sha256
    and block hashes, by the same check as `edgerun.load(..., verify=True)`
    (edgerun.core.integrity.file_problem), so the two cannot disagree. Unlisted files are `extra`."""
    from edgerun.core.integrity import file_problem

    root = Path(artifact_dir)
    manifest = read_manifest(root)
    report = VerifyReport()
    recorded = manifest.get("files", [])
    for entry in recorded:
        problem = file_problem(root, entry, full=True)
        bucket = report.ok if problem is None else report.changed
        (report.missing if problem == "missing" else bucket).append(entry["name"])
    listed = {entry["name"] for entry in recorded}
    on_disk = (f for f in root.rglob("*") if f.is_file() and f.name != MANIFEST_NAME)
    report.extra = sorted({str(f.relative_to(root)) for f in on_disk} - listed)
    return report
