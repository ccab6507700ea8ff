"""``python -m benchmarks.scale``: what exporting and running costs as models grow (issue 20).

For each shape (random-weight checkpoints with real models' shapes, made locally by
benchmarks.scale_models; nothing is downloaded) and each format, one measured child process runs
``edgerun export`` with its defaults (validation included unless --no-validate): wall time and
peak RSS of the whole export, each stage's wall time and peak RSS (the manifest's record, else
the stage lines it printed), and the manifest's memory estimate, validation and size. The peer is llama.cpp's converter (f16) plus llama.cpp's
quantizer (q4_k_m) on the same checkpoint. Then each artifact is loaded and decoded by
``edgerun bench`` (load RSS and decode tok/s), and its RSS is held against file size + KV cache +
0.5 GB. Results go to benchmarks/results/scale-<time>.json, with a plot beside it.

Shapes run largest-last and one at a time: run it on an otherwise idle machine.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from benchmarks import RESULTS, machine, work_dir
from benchmarks.proc import run_measured

PY = sys.executable
STAGE = re.compile(r"✓ (?P<name>.+?) \((?P<wall>[\d.]+) s(?:, peak (?P<peak>[\d.]+) GiB)?\)")
GIB = 1 << 30
DEFAULT_SHAPES = "smollm2-135m,qwen2.5-0.5b,llama-3.2-1b,qwen2.5-1.5b,llama-3.2-3b,llama-3.1-8b"
DEFAULT_FORMATS = "onnx-int4,onnx-int8,gguf-q4_k_m"
EXPORT_ARGS: list[str] = []  # --export-args: more `edgerun export` options for every export


def checkpoint(shape: str, models: Path) -> Path:
    """The random-weight checkpoint of `shape` under `models`, made first when missing."""
    path = models / shape
    if not (path / "config.json").is_file():
        cmd = [PY, "-m", "benchmarks.scale_models", shape, str(path)]
        result = run_measured(cmd, work_dir() / "scale" / f"make-{shape}.log")
        if result.rc != 0:
            raise SystemExit(f"error: making {shape} failed: see {work_dir()}/scale")
    return path


def params_and_bytes(ckpt: Path) -> tuple[int, int]:
    """(parameters, bytes of the weight files) of a safetensors checkpoint, from its headers."""
    import struct

    n = size = 0
    for f in sorted(ckpt.glob("*.safetensors")):
        size += f.stat().st_size
        with f.open("rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(length))
        for name, entry in header.items():
            if name != "__metadata__":
                count = 1
                for dim in entry["shape"]:
                    count *= dim
                n += count
    return n, size


def tokenizer_id(ckpt: Path) -> str | None:
    """The first 16 hex digits of the SHA-256 of a checkpoint's tokenizer.json. Every stage's
    cost grows with tokens as well as parameters: shapes tokenizing the same text into different
    counts are not points on one time curve (session 9's Qwen shapes carried a 384-token
    tokenizer, 2.7x the tokens of the others)."""
    import hashlib

    path = ckpt / "tokenizer.json"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else None


def stages(log: Path) -> list[dict[str, Any]]:
    """The stage lines an export printed: name, wall seconds (and peak GiB where printed)."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    return [
        {
            "name": m["name"],
            "wall_s": float(m["wall"]),
            "peak_rss_bytes": int(float(m["peak"]) * GIB) if m["peak"] else None,
        }
        for m in STAGE.finditer(text)
    ]


def export_row(
    ckpt: Path, fmt: str, out: Path, logs: Path, validate: bool, eval_text: Path | None
) -> dict[str, Any]:
    """One measured `edgerun export` of `fmt`: process numbers, stages and manifest fields."""
    cmd = [PY, "-m", "edgerun", "export", str(ckpt), "-f", fmt, "-o", str(out), "--overwrite"]
    cmd += ["--no-probe"] + ([] if validate else ["--no-validate"])
    cmd += ["--eval-text", str(eval_text)] if eval_text else []
    cmd += EXPORT_ARGS
    proc = run_measured(cmd, logs / f"export-{fmt}.log")
    row: dict[str, Any] = {
        "format": fmt,
        "rc": proc.rc,
        "wall_s": round(proc.wall_s, 1),
        "peak_rss_bytes": proc.peak_rss_bytes,
        "stages": stages(logs / f"export-{fmt}.log"),
    }
    manifest_path = out / fmt / "edgerun.json"
    if proc.rc == 0 and manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        validation = manifest.get("validation") or {}
        row.update(
            artifact=str(out / fmt),
            model_bytes=(manifest.get("size") or {}).get("model_bytes"),
            bits_per_weight=(manifest.get("size") or {}).get("bits_per_weight"),
            manifest_peak_rss_bytes=manifest["export"].get("peak_rss_bytes"),
            stages=manifest["export"].get("stages") or row["stages"],
            memory_estimate=manifest["export"].get("memory_estimate"),
            validation={
                k: validation.get(k) for k in ("passed", "mean_kl", "ppl_ratio", "top1_agreement")
            },
        )
    else:
        row["error"] = _tail(logs / f"export-{fmt}.log")
    return row


def peer_row(ckpt: Path, out: Path, logs: Path) -> dict[str, Any]:
    """llama.cpp's converter to f16, then its quantizer to q4_k_m: each step measured."""
    from edgerun.exporters.gguf import converter

    conv = converter.ensure()
    f16, q4 = out / "peer-f16.gguf", out / "peer-q4_k_m.gguf"
    steps = [
        ("convert_hf_to_gguf f16", [PY, str(conv.script), str(ckpt), "--outfile", str(f16),
                                    "--outtype", "f16"]),
        ("llama quantize q4_k_m", [PY, "-m", "benchmarks.peer_exports", "llama-quantize",
                                   str(f16), str(q4), "q4_k_m"]),
    ]  # fmt: skip
    row: dict[str, Any] = {"format": "llama.cpp converter + quantize q4_k_m", "steps": []}
    for name, cmd in steps:
        # the converter from its own directory (its gguf-py beside it), the quantizer from here
        cwd = conv.script.parent if name.startswith("convert") else Path(__file__).parents[1]
        proc = run_measured(cmd, logs / f"peer-{name.split()[0]}.log", cwd=cwd)
        row["steps"].append(
            {"name": name, "rc": proc.rc, "wall_s": round(proc.wall_s, 1),
             "peak_rss_bytes": proc.peak_rss_bytes}
        )  # fmt: skip
        if proc.rc != 0:
            row["error"] = _tail(logs / f"peer-{name.split()[0]}.log")
            break
    row["wall_s"] = round(sum(s["wall_s"] for s in row["steps"]), 1)
    row["peak_rss_bytes"] = max(s["peak_rss_bytes"] for s in row["steps"])
    f16.unlink(missing_ok=True)
    q4.unlink(missing_ok=True)
    return row


def run_row(artifact: Path, logs: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Load and decode `artifact` with edgerun bench: load RSS, decode tok/s, against budget."""
    result = logs / f"bench-{artifact.name}.json"
    result.unlink(missing_ok=True)
    cmd = [PY, "-m", "edgerun", "bench", str(artifact), "--prompt-tokens", "64",
           "--gen-tokens", "32", "--reps", "3", "--warmup", "1", "--idle-seconds", "0",
           "--json", str(result)]  # fmt: skip
    proc = run_measured(cmd, logs / f"bench-{artifact.name}.log")
    if proc.rc != 0 or not result.is_file():
        return {"rc": proc.rc, "error": _tail(logs / f"bench-{artifact.name}.log")}
    return bench_row(result, config)


def bench_row(result: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The run row from an `edgerun bench --json` result: RSS against file + KV + 0.5 GiB."""
    art = json.loads(result.read_text())["runs"][0]["artifacts"][0]
    summary = art["summary"]["by_prompt"]["64"]
    # The context the runtime ran with (sized from the profile, capped), not the trained one the
    # manifest records (131,072 for Llama-3.1-8B, whose KV would be 17 GB: a check that can't fail)
    context = (
        (art.get("runtime_info") or {}).get("context_length") or art.get("context_length") or 0
    )
    kv = kv_bytes(config, context, kv_dtype_bytes(Path(art.get("path") or "")))
    size = art.get("size_bytes") or 0
    peak = (summary.get("peak_rss") or {}).get("median")
    return {
        "rc": 0,
        "decode_tok_s": (summary.get("decode_tok_s") or {}).get("median"),
        "decode_tok_s_min": (summary.get("decode_tok_s") or {}).get("min"),
        "decode_tok_s_max": (summary.get("decode_tok_s") or {}).get("max"),
        "peak_rss_bytes": peak,
        # mmap'ed weights are file-backed (llama.cpp); packed copies are anonymous (MLAS)
        "anonymous_bytes": (summary.get("anonymous") or {}).get("median"),
        "file_backed_bytes": (summary.get("file_backed") or {}).get("median"),
        "file_bytes": size,
        "context": context,
        "kv_bytes": kv,
        "within_budget": None if peak is None else peak <= size + kv + GIB // 2,
    }


def kv_dtype_bytes(artifact: Path) -> int:
    """Bytes per KV-cache element of an artifact: an ONNX graph's past_key_values input type
    (onnxruntime-genai's CPU int4/int8 graphs keep an fp32 cache), else 2 (llama.cpp's f16)."""
    graph = artifact / "model.onnx"
    if not graph.is_file():
        return 2
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    sizes = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.BFLOAT16: 2}
    for given in model.graph.input:
        if given.name.startswith("past_key_values"):
            return sizes.get(given.type.tensor_type.elem_type, 4)
    return 2


def kv_bytes(config: dict[str, Any], context: int, dtype_bytes: int = 2) -> int:
    """K and V of every layer for `context` tokens of `dtype_bytes` each (kv_dtype_bytes)."""
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    kv_heads = config.get("num_key_value_heads") or heads
    return 2 * config["num_hidden_layers"] * kv_heads * head_dim * context * dtype_bytes


def _tail(log: Path) -> str:
    lines = log.read_text(errors="replace").strip().splitlines() if log.is_file() else []
    return lines[-1][:300] if lines else "no output"


@click.command()
@click.option("--shapes", default=DEFAULT_SHAPES, show_default=True)
@click.option("--formats", default=DEFAULT_FORMATS, show_default=True)
@click.option("--models", type=click.Path(path_type=Path), default=None,
              help="Where the random-weight checkpoints are kept, made once [benchmarks/work/scale-models].")  # fmt: skip
@click.option("--validate/--no-validate", default=True, show_default=True)
@click.option("--eval-chars", type=int, default=None,
              help="Validate on the first N characters of the shipped eval text (all of it if unset).")  # fmt: skip
@click.option("--peer/--no-peer", default=True, show_default=True)
@click.option("--bench/--no-bench", "bench", default=True, show_default=True)
@click.option(
    "--export-args", default="", help="More `edgerun export` options, e.g. '--max-memory 6G'."
)
@click.option("--keep", is_flag=True, help="Keep the artifacts (they are deleted per shape).")
def main(
    shapes: str,
    formats: str,
    models: Path | None,
    validate: bool,
    eval_chars: int | None,
    peer: bool,
    bench: bool,
    export_args: str,
    keep: bool,
) -> None:
    """Export (and run) every shape in every format; record the cost curve."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    EXPORT_ARGS[:] = shlex.split(export_args)
    results: dict[str, Any] = {
        "what": "edgerun export / run cost by model size (random weights, real shapes)",
        "created": stamp,
        "machine": machine.describe(),
        "commit": machine.git_commit(),
        "validate": validate,
        "eval_chars": eval_chars,
        "export_args": export_args,
        "shapes": [],
    }
    eval_text = _eval_slice(eval_chars) if eval_chars else None
    path = RESULTS / f"scale-{stamp}.json"
    models = models or work_dir() / "scale-models"
    for shape in shapes.split(","):
        ckpt = checkpoint(shape, models)
        n, size = params_and_bytes(ckpt)
        config = json.loads((ckpt / "config.json").read_text())
        out, logs = work_dir() / "scale" / shape, work_dir() / "scale" / f"{shape}-logs"
        logs.mkdir(parents=True, exist_ok=True)
        entry: dict[str, Any] = {"shape": shape, "parameters": n, "checkpoint_bytes": size,
                                 "tokenizer": tokenizer_id(ckpt), "exports": [], "peer": None}  # fmt: skip
        for fmt in formats.split(","):
            row = export_row(ckpt, fmt, out, logs, validate, eval_text)
            if bench and row.get("artifact"):
                row["run"] = run_row(Path(row["artifact"]), logs, config)
            entry["exports"].append(row)
            _say(shape, row)
        if peer:
            entry["peer"] = peer_row(ckpt, out, logs)
            _say(shape, entry["peer"])
        results["shapes"].append(entry)
        path.write_text(json.dumps(results, indent=1))  # after every shape: nothing lost
        if not keep:
            shutil.rmtree(out, ignore_errors=True)
    results["fits"] = linear_fits(results)
    path.write_text(json.dumps(results, indent=1))
    plot(results, path.with_suffix(".png"))
    click.echo(f"results: {path}")


def _eval_slice(chars: int) -> Path:
    """The first `chars` characters of the shipped evaluation text, as a file to pass."""
    from edgerun.exporters.reference import read_eval_text

    path = work_dir() / "scale" / f"eval-{chars}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(read_eval_text(None)[:chars], encoding="utf-8")
    return path


def _say(shape: str, row: dict[str, Any]) -> None:
    peak = (row.get("peak_rss_bytes") or 0) / GIB
    extra = row.get("error") or (row.get("validation") or {})
    click.echo(f"{shape} {row['format']}: {row.get('wall_s')} s, peak {peak:.2f} GiB {extra}")


def linear_fits(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per format with three or more shapes: the least-squares line wall = a + b x parameters
    (b in seconds per billion parameters) and its R², the test of "export time grows about
    linearly with parameters"."""
    import numpy as np

    points: dict[str, list[tuple[float, float]]] = {}
    tokenizers: dict[str, set[str | None]] = {}
    for shape in results["shapes"]:
        for row in [*shape["exports"], *([shape["peer"]] if shape.get("peer") else [])]:
            if row.get("wall_s") and not row.get("error"):
                points.setdefault(row["format"], []).append(
                    (shape["parameters"] / 1e9, row["wall_s"])
                )
                tokenizers.setdefault(row["format"], set()).add(shape.get("tokenizer"))
    fits = {}
    for name, pts in points.items():
        if len(pts) < 3:
            continue
        x, y = np.array(pts).T
        slope, intercept = np.polyfit(x, y, 1)
        residual = float(((y - (intercept + slope * x)) ** 2).sum())
        total = float(((y - y.mean()) ** 2).sum()) or 1.0
        fits[name] = {
            "s_per_billion": round(float(slope), 1),
            "intercept_s": round(float(intercept), 1),
            "r2": round(1.0 - residual / total, 4),
            "shapes": len(pts),
            # False: the shapes tokenized the text differently (or it is unknown), so the
            # walls mix token counts and the line is not a test of linearity in parameters
            "one_tokenizer": len(tokenizers[name]) == 1 and None not in tokenizers[name],
        }
    return fits


def plot(results: dict[str, Any], png: Path) -> None:
    """Export peak RSS and wall time against parameters, one line per format and the peer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (mem, wall) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    series: dict[str, list[tuple[float, float, float]]] = {}
    for shape in results["shapes"]:
        rows = [*shape["exports"], *([shape["peer"]] if shape["peer"] else [])]
        for row in rows:
            if row.get("peak_rss_bytes") and not row.get("error"):
                series.setdefault(row["format"], []).append(
                    (shape["parameters"] / 1e9, row["peak_rss_bytes"] / GIB, row["wall_s"])
                )
    fits = linear_fits(results)
    for name, points in series.items():
        xs, peaks, walls = zip(*sorted(points), strict=True)
        mem.plot(xs, peaks, marker="o", label=name)
        line = wall.plot(xs, walls, marker="o", label=name)[0]
        if name in fits:
            fit = fits[name]
            ends = (0.0, max(xs))
            wall.plot(ends, [fit["intercept_s"] + fit["s_per_billion"] * x for x in ends], ":",
                      color=line.get_color(), label=f"{name} fit, R² {fit['r2']:.3f}")  # fmt: skip
    ckpts = sorted((s["parameters"] / 1e9, s["checkpoint_bytes"] / GIB) for s in results["shapes"])
    if ckpts:
        mem.plot(*zip(*ckpts, strict=True), "k--", label="bf16 checkpoint size")
    mem.set(xlabel="parameters (billions)", ylabel="export peak RSS (GiB)", title="export memory")
    wall.set(xlabel="parameters (billions)", ylabel="export wall time (s)", title="export time")
    mem.legend(fontsize=8)
    wall.legend(fontsize=7)
    fig.suptitle(f"edgerun export cost by model size ({results['machine']['cpu']}, "
                 f"{results['created']}, validation {'on' if results['validate'] else 'off'})")  # fmt: skip
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main()
