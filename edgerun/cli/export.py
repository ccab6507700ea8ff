"""`edgerun export SOURCE -f FORMATS -o OUTDIR`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgerun.cli.options import GroupedCommand, echo_json, json_option
from edgerun.core.errors import EdgerunError


class GateFailed(EdgerunError):
    """An artifact failed validation and was not written (exit 1, not 2: the input was fine)."""

    exit_code = 1


def _formats_help() -> str:
    return "Comma list of formats, e.g. onnx-int4,gguf-q4_k_m (see `edgerun export --list`)."


# --help's sections: what to make, how to quantize, how to validate, what to list
HELP_GROUPS = {
    "What to export": ["formats", "out_dir", "profile", "builder", "overwrite"],
    "Quantization": [
        "recipe", "target_kl", "target_ppl_ratio", "calib_text", "imatrix", "gptq", "block_size",
        "symmetric", "accuracy_level", "algorithm", "int8_mode", "extra_option",
    ],
    "Validation": [
        "eval_text", "max_ppl_ratio", "max_kl", "min_top1", "force", "no_validate", "probe",
    ],
    "Resources": ["threads", "max_memory", "keep_intermediates"],
    "Lists": ["list_formats", "list_recipes", "list_architectures"],
}  # fmt: skip


@click.command(cls=GroupedCommand, groups=HELP_GROUPS)
@click.argument("source", required=False)
@click.option("-f", "--formats", "formats", help=_formats_help())
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), help="Output directory.")
@click.option(
    "--profile",
    "profile",
    default=None,
    help="Device profile id or TOML file, or 'detect': its preferred formats (when -f is not given)"
    " and its [export] settings (where no option is given), with the reasons printed.",
)
@click.option("--list", "list_formats", is_flag=True, help="List the formats and exit.")
@click.option("--list-recipes", is_flag=True, help="List the onnx-int4 recipes and exit.")
@click.option(
    "--list-architectures",
    is_flag=True,
    help="List the tested model families (family x format x builder) and exit; with --json, as JSON.",
)
@click.option(
    "--block-size",
    type=int,
    help="int4/int8 block size (16-256; default: the onnx-int4 recipe's, else 32).",
)
@click.option(
    "--symmetric/--asymmetric",
    default=None,
    help="int4/int8 zero point (default: asymmetric for onnx-int4 and hqq, symmetric for onnx-int8).",
)
@click.option("--accuracy-level", default=4, show_default=True, help="MatMulNBits compute (0-4).")
@click.option(
    "--algorithm", default="rtn", show_default=True, help="int4/int8 algorithm: rtn | hqq."
)
@click.option(
    "--recipe",
    help="onnx-int4 mixed-precision recipe: which MatMuls get 8 bits (see --list-recipes; default q4-mixed).",
)
@click.option(
    "--target-kl",
    type=float,
    help="onnx-int4: the smallest mixed int4/int8 artifact whose mean KL meets this; gguf"
    " quant types: the fewest tensors raised to q8_0 (calibrated, then checked on the eval text).",
)
@click.option(
    "--target-ppl-ratio", type=float, help="onnx-int4, gguf: as --target-kl, for the PPL ratio."
)
@click.option(
    "--calib-text",
    type=click.Path(path_type=Path),
    help="Calibration text of a target search (UTF-8; never the eval text).",
)
@click.option(
    "--imatrix/--no-imatrix",
    default=None,
    help="Quantize with importance statistics of the calibration text (ONNX int4/int8 weighted"
    " rounding; llama.cpp's importance matrix, which iq1/iq2 and q2_k_s need), measured layer by"
    " layer. Default: on for onnx-int4 (RTN), the GGUF k-quants and the types that need one.",
)
@click.option(
    "--gptq/--no-gptq",
    default=None,
    help="onnx-int4: round with GPTQ over the calibration inputs' second moments (gathered with"
    " the importance statistics; streamed export, models whose matrices fit 1 GiB)."
    " Default: on.",
)
@click.option(
    "--probe/--no-probe",
    default=True,
    show_default=True,
    help="Time a short greedy decode of each artifact on this machine (manifest 'probe').",
)
@click.option(
    "--int8-mode",
    default="weight-only",
    show_default=True,
    help="weight-only | dynamic (MatMulInteger).",
)
@click.option(
    "--builder",
    default="auto",
    show_default=True,
    help="ONNX graph: auto (genai for onnx-fp32, onnx-int8 and onnx-int4 when installed and supported, else optimum) | optimum | genai.",
)
@click.option("--threads", type=int, help="CPU threads for the reference and validation runs.")
@click.option("--eval-text", type=click.Path(path_type=Path), help="Validate on this UTF-8 text.")
@click.option(
    "--max-ppl-ratio",
    type=float,
    help="Gate: highest PPL ratio that passes (default by bit width: 1.02 for 16+ bits, 1.05 for 8, 1.25 for 5-6, 1.35 for onnx-int4, 1.5 below).",
)
@click.option("--max-kl", type=float, help="Gate: highest mean KL divergence that passes.")
@click.option("--min-top1", type=float, help="Gate: lowest top-1 agreement that passes.")
@click.option("--force", is_flag=True, help="Write artifacts that fail validation (passed: false).")
@click.option("--no-validate", is_flag=True, help="Skip validation (manifest validation: null).")
@click.option("--overwrite", is_flag=True, help="Replace existing OUTDIR/<format> directories.")
@click.option("--keep-intermediates", is_flag=True, help="Keep the scratch directory.")
@click.option(
    "--max-memory",
    metavar="SIZE",
    help="Memory the export may use, e.g. 8G (default: the RAM available now); it refuses"
    " before any work when its estimated peak is larger.",
)
@click.option(
    "--extra-option",
    "extra_option",
    multiple=True,
    metavar="TARGET.KEY=VALUE",
    help="An option of a library the export drives that has no flag here, recorded in the"
    " manifest (repeatable): genai.KEY=VALUE for onnxruntime-genai's builder (its"
    " --extra_options), llama.KEY=VALUE for llama.cpp's quantizer (pure, allow_requantize,"
    " quantize_output_tensor, output_tensor_type, token_embedding_type), edgerun.onnx_stream=false"
    " to build ONNX from the whole fp32 graph instead of streaming it.",
)
@json_option
def export(source: str | None, formats: str | None, out_dir: Path | None, **kw: Any) -> None:
    """Export SOURCE to one validated artifact directory per format: OUTDIR/<format>/.

    SOURCE is anything `edgerun pull` accepts. Each artifact is run for real (onnxruntime,
    llama.cpp) on an evaluation text and compared with the PyTorch fp32 reference (PPL ratio, mean
    KL, top-1 agreement); one that fails the gate is not written unless --force.
    """
    from edgerun.exporters.formats import UNAVAILABLE, all_formats

    if kw.pop("list_recipes"):
        from edgerun.exporters.onnx.recipes import DEFAULT_RECIPE, RECIPES

        for recipe in RECIPES.values():
            mark = " (default)" if recipe.name == DEFAULT_RECIPE else ""
            click.echo(f"{recipe.name}{mark}: {recipe.description}")
        return
    if kw.pop("list_architectures"):
        _print_architectures(kw["as_json"])
        return
    if kw.pop("list_formats"):
        click.echo("\n".join(all_formats()))
        for prefix, why in UNAVAILABLE.items():
            click.echo(f"{prefix}-*: unavailable ({why})")
        return
    if not source or not out_dir or not (formats or kw["profile"]):
        raise click.UsageError("SOURCE, -o/--out and -f/--formats (or --profile) are required")
    as_json = kw.pop("as_json")
    ctx = click.get_current_context()
    explicit = {
        name
        for name in kw
        if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
    }
    results = _run(source, formats, out_dir, kw, explicit, progress=not as_json)
    if as_json:
        echo_json([_result_json(r) for r in results])
    else:
        _print_results(results)
    _exit_status(results)


def _run(
    source: str,
    formats: str | None,
    out_dir: Path,
    kw: dict[str, Any],
    explicit: set[str],
    progress: bool,
) -> list[Any]:
    from edgerun.exporters.formats import ExportOptions
    from edgerun.exporters.pipeline import export as run_export

    gate = {"max_ppl_ratio": kw.pop("max_ppl_ratio"), "max_mean_kl": kw.pop("max_kl")}
    gate["min_top1_agreement"] = kw.pop("min_top1")
    overrides = {k: v for k, v in gate.items() if v is not None}
    if kw["no_validate"]:
        click.echo("warning: --no-validate: artifacts are written with validation: null", err=True)
    profile = kw.pop("profile")
    from edgerun.exporters.extra_options import parse_extra

    kw["extra"] = parse_extra(kw.pop("extra_option"))
    if kw["max_memory"] is not None:
        from edgerun.exporters.memory import parse_size

        kw["max_memory"] = parse_size(kw["max_memory"])
    options = ExportOptions(**kw, progress=progress, gate_overrides=overrides)
    return run_export(source, formats, out_dir, options, profile=profile, explicit=explicit)


def _print_architectures(as_json: bool) -> None:
    from edgerun.exporters.families import FORMATS, table

    rows = table()
    if as_json:
        echo_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    grid = Table(title=f"Tested families: {', '.join(FORMATS)} each, against transformers")
    for column in ("family", "model_type", "ONNX builder (auto)", "GGUF", "tokenizer"):
        grid.add_column(column, overflow="fold")
    for row in rows:
        grid.add_row(
            row["family"], row["model_type"], row["onnx_builder"], row["gguf"], row["tokenizer"]
        )
    Console().print(grid)
    click.echo("genai (X): onnxruntime-genai's graph where the rope scaling is X, else optimum's.")
    click.echo("Other families: tried with optimum's exporter and llama.cpp's converter, untested.")
    click.echo("What each family's test covers: --list-architectures --json.")


def _print_results(results: list[Any]) -> None:
    from edgerun.exporters.report import print_results

    print_results(results)
    for r in results:
        if r.written:
            click.echo(f"{r.format}: {r.path}")


def _result_json(r: Any) -> dict[str, Any]:
    return {
        "format": r.format,
        "path": str(r.path) if r.path else None,
        "written": r.written,
        "passed": r.passed,
        "status": r.status,
        "reason": r.reason,
        "size_bytes": r.size_bytes,
        "wall_s": r.wall_s,
        "validation": r.validation,
        "size": (r.manifest or {}).get("size"),
        "probe": (r.manifest or {}).get("probe"),
    }


def _exit_status(results: list[Any]) -> None:
    """One line per problem on stderr; exit 1 when an artifact was not written."""
    for r in results:
        if r.written and r.passed is False:
            click.echo(
                f"warning: {r.format} failed validation ({r.reason}); written anyway (--force)",
                err=True,
            )
    failed = [r for r in results if not r.written]
    if not failed:
        return
    first = failed[0]
    more = f" (+{len(failed) - 1} more)" if len(failed) > 1 else ""
    if first.passed is False:
        raise GateFailed(
            f"{first.format} failed validation: {first.reason}; not written{more}",
            _gate_hint(first.format),
        )
    raise GateFailed(f"{first.format} was not exported: {first.reason}{more}")


def _gate_hint(fmt: str) -> str:
    """What to try before --force: for onnx-int4 a more faithful recipe or a quality target."""
    from edgerun.exporters.onnx.formats import FORMATS

    force = "pass --force to write it with passed: false"
    spec = FORMATS.get(fmt)
    if spec is not None and spec.recipes:
        return (
            f"try the default --recipe q4-mixed, or --target-kl 0.1 (more 8-bit layers); or {force}"
        )
    return force
