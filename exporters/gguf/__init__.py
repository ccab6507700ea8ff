"""The GGUF format family: HF -> GGUF with llama.cpp's own converter (gguf-f32 / gguf-f16 /
gguf-bf16), at the version of the installed llama-cpp-python, then any llama.cpp quantization
type through llama.cpp's own quantizer (gguf-q8_0, gguf-q4_k_m, ...). Validation runs the
artifact in llama.cpp (llama-cpp-python).

Importing this module is cheap: gguf, torch and llama_cpp are imported inside the functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgerun.core.errors import EdgerunError, require

if TYPE_CHECKING:  # pragma: no cover
    from edgerun.exporters.formats import ExportContext, ExportOptions
    from edgerun.exporters.validate import LogitsFn

MODEL_FILE = "model.gguf"
FLOAT_FORMATS = ("f32", "f16", "bf16")
PRECISION = {"f32": "fp32", "f16": "fp16", "bf16": "bf16"}
# Quantization starts from this float GGUF, kept in the export's scratch dir and shared by every
# quant format of one call (llama.cpp's documented convert-to-f16-then-quantize workflow).
INTERMEDIATE = "f16"
# Quantize with the export's importance statistics (gathered layer by layer,
# edgerun.exporters.importance) by default for the k-quants and the types that need them.
# SmolLM2-135M gguf-q4_k_m mean KL with them: 0.055 -> 0.034 (demo checkpoint), 0.083 -> 0.058
# (off grid; benchmarks/README.md "Fidelity"); the file's layout and size are unchanged.
IMATRIX_DEFAULT = True


class GGUFFamily:
    """FormatFamily for GGUF (see edgerun.exporters.formats.FormatFamily)."""

    prefix = "gguf"

    def formats(self) -> list[str]:
        """gguf-f32, gguf-f16, gguf-bf16, then every quant type the installed llama.cpp has."""
        from edgerun.exporters.gguf.quantize import quant_types

        return [f"gguf-{t}" for t in (*FLOAT_FORMATS, *quant_types())]

    def withheld(self) -> dict[str, str]:
        """llama.cpp types edgerun does not export, with the reason (quantize.EXCLUDED)."""
        from edgerun.exporters.gguf.quantize import EXCLUDED

        return {f"gguf-{name}": why for name, why in EXCLUDED.items()}

    def check_options(self, fmt: str, options: ExportOptions) -> None:
        """Fail before any work when a needed library is missing or `fmt` is not ours."""
        kind = _kind(fmt)
        from edgerun.exporters.gguf.quantize import quant_types

        if kind not in FLOAT_FORMATS and kind not in quant_types():
            raise EdgerunError(
                f"unknown GGUF format '{fmt}'",
                f"available: {', '.join(self.formats())}",
            )
        require("gguf", "export")
        require("llama_cpp", "gguf")  # its sdist carries the converter; it runs the artifacts
        from edgerun.exporters.gguf.quantize import NEEDS_IMATRIX

        if kind in NEEDS_IMATRIX and not uses_imatrix(options, kind):
            raise EdgerunError(f"llama.cpp needs an importance matrix for {fmt}", "pass --imatrix")
        if _targeted(options):
            _check_target(fmt, kind, options)

    def check_source(self, fmt: str, options: ExportOptions, config: dict[str, Any]) -> None:
        """Fail before any work for a family edgerun knows llama.cpp cannot convert or run;
        a family not in the registry is left to llama.cpp's converter to accept or refuse."""
        from edgerun.exporters.families import check_format

        check_format(config, "gguf")

    def export(self, fmt: str, ctx: ExportContext, out_dir: Path) -> dict[str, Any]:
        """Write out_dir/model.gguf; return the manifest fields."""
        kind = _kind(fmt)
        out = Path(out_dir) / MODEL_FILE
        intermediate = Path(ctx.scratch) / f"intermediate-{INTERMEDIATE}.gguf"
        if kind in FLOAT_FORMATS:
            if kind == INTERMEDIATE and intermediate.is_file():
                _link_or_copy(intermediate, out)  # same bytes: converted earlier in this call
            else:
                _convert(ctx, out, kind)
            if kind == INTERMEDIATE and not intermediate.is_file():
                _link_or_copy(out, intermediate)  # later quant formats start from it
            quant = None
        else:
            from edgerun.exporters.gguf.quantize import quantize

            source = intermediate
            if not source.is_file():
                _convert(ctx, source, INTERMEDIATE)
            imatrix, note = _importance(ctx, kind, source, out_dir)
            tensor_types = ctx.options.extra.get("tensor_types") or None
            recipe = None
            if _targeted(ctx.options):
                tensor_types, recipe = _search(ctx, kind, source, imatrix)
            with ctx.stage(f"llama.cpp quantize {kind}") as detail:
                types = tensor_types or None
                quantize(
                    source, out, kind, ctx.options.threads, imatrix, types, ctx.options.extra,
                    detail,
                )  # fmt: skip
            quant = {
                "type": kind,
                "quantizer": "llama.cpp llama_model_quantize",
                "from": INTERMEDIATE,
                "imatrix": note,
            }
            if tensor_types:
                quant["tensor_types"] = _check_types(out, tensor_types)
            if recipe is not None:
                quant["recipe"] = recipe
        from edgerun.exporters.gguf.converter import ensure
        from edgerun.exporters.gguf.quantize import describe

        extras = {"file_type": kind, **describe(out), **ensure().provenance()}
        extras["tokenizer_parity"] = _parity(out, ctx)
        return {
            "precision": PRECISION.get(kind, kind),
            "quant": quant,
            "builder": "llama.cpp convert_hf_to_gguf",
            "model_file": MODEL_FILE,
            "gguf": extras,
            "libraries": _libraries(),
        }

    def logits_fn(self, artifact_dir: Path, manifest: dict[str, Any]) -> LogitsFn:
        """Logits of the artifact computed by llama.cpp (llama-cpp-python, logits_all)."""
        from edgerun.exporters.gguf.runtime import logits_fn

        threads = manifest.get("threads")  # set by the pipeline from --threads during export
        return logits_fn(Path(artifact_dir) / manifest.get("model_file", MODEL_FILE), threads)


def uses_imatrix(options: ExportOptions, kind: str) -> bool:
    """Whether `kind` is quantized with the export's importance statistics: --imatrix /
    --no-imatrix, else IMATRIX_DEFAULT for the k-quants and the types that need one (q8_0 and
    the float types ignore one)."""
    if kind in FLOAT_FORMATS or kind == "q8_0":
        return False
    if options.imatrix is None:
        from edgerun.exporters.gguf.quantize import NEEDS_IMATRIX

        return IMATRIX_DEFAULT and ("_k" in kind or kind in NEEDS_IMATRIX)
    return options.imatrix


def _importance(
    ctx: ExportContext, kind: str, source: Path, out_dir: Path
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(GGUF tensor name -> importance vector, the manifest note), or (None, None)."""
    if not uses_imatrix(ctx.options, kind):
        return None, None
    from edgerun.exporters.gguf.imatrix import imatrix_entries
    from edgerun.exporters.importance import attach, gather

    try:
        entries = imatrix_entries(gather(ctx).values, source)
    except EdgerunError as exc:
        if ctx.options.imatrix:  # asked for: say why not
            raise
        return None, {"used": False, "reason": exc.message}  # the default: quantize without
    note = {**attach(ctx, out_dir), "gguf_tensors": len(entries)}
    return entries, note


def _targeted(options: ExportOptions) -> bool:
    return options.target_kl is not None or options.target_ppl_ratio is not None


def _check_target(fmt: str, kind: str, options: ExportOptions) -> None:
    """A quality target raises a quantized type's tensors and is gated by validation."""
    if kind in FLOAT_FORMATS:
        raise EdgerunError(f"{fmt} is not quantized: a quality target has nothing to raise", "")
    if options.no_validate:
        raise EdgerunError(
            "a quality target is checked by validation, which --no-validate skips",
            "drop --no-validate",
        )
    if options.extra.get("tensor_types"):
        raise EdgerunError("a quality target chooses the tensor types itself", "")


def _search(
    ctx: ExportContext, kind: str, source: Path, imatrix: dict[str, Any] | None
) -> tuple[dict[str, str], dict[str, Any]]:
    """The target search's tensor-type overrides and recipe (edgerun.exporters.gguf.target),
    its tensors ranked by the export's importance statistics (used or not for quantizing)."""
    from edgerun.exporters.gguf.imatrix import imatrix_entries
    from edgerun.exporters.gguf.target import search_types
    from edgerun.exporters.importance import gather

    importance = imatrix if imatrix is not None else imatrix_entries(gather(ctx).values, source)
    with ctx.stage(f"calibrate (gguf-{kind} tensor types for the target)") as detail:
        return search_types(ctx, kind, source, imatrix, importance, detail)


def _check_types(path: Path, requested: dict[str, str]) -> dict[str, Any]:
    """The tensor types the header of `path` records for each requested override pattern;
    EdgerunError when a matching tensor was written with another type."""
    import re

    from edgerun.exporters.gguf.imatrix import written_types

    written = written_types(path)
    for pattern, type_name in requested.items():
        names = [n for n in written if re.search(pattern, n)]
        wrong = [n for n in names if written[n] != type_name.lower()]
        if not names or wrong:
            what = (
                f"{wrong[0]} was written as {written[wrong[0]]}" if wrong else "no tensor matches"
            )
            raise EdgerunError(
                f"tensor type override {pattern} -> {type_name}: {what}",
                "llama.cpp falls back where a row length does not fit the type; choose another",
            )
    return {"requested": dict(requested), "verified": True}


def _parity(path: Path, ctx: ExportContext) -> dict[str, Any]:
    """llama.cpp's tokenization of the evaluation text against the HF tokenizer's (manifest
    gguf.tokenizer_parity): reported, never hidden, since it changes what the model is fed.
    Every GGUF of one export call holds the same vocabulary, so it is computed once per call."""
    import json

    from edgerun.exporters.gguf.runtime import tokenizer_parity
    from edgerun.exporters.reference import read_eval_text

    saved = Path(ctx.scratch) / "gguf-tokenizer-parity.json"
    if saved.is_file():
        parity: dict[str, Any] = json.loads(saved.read_text(encoding="utf-8"))
        return parity
    text = read_eval_text(ctx.options.eval_text)
    label = str(ctx.options.eval_text) if ctx.options.eval_text else "shipped eval text"
    parity = tokenizer_parity(path, ctx.reference.tokenizer, text, label)
    saved.write_text(json.dumps(parity), encoding="utf-8")
    return parity


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link `src` to `dst` (scratch and artifact share the output directory's file
    system); copy when linking is not possible. Atomic: `dst` appears complete or not at all."""
    import os
    import shutil

    partial = dst.with_name(dst.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        os.link(src, partial)
    except OSError:
        shutil.copyfile(src, partial)
    os.replace(partial, dst)


def _libraries() -> dict[str, str | None]:
    from edgerun.core.versions import versions

    return versions(("gguf", "llama_cpp_python"))


def _kind(fmt: str) -> str:
    if not fmt.startswith("gguf-"):
        raise EdgerunError(f"'{fmt}' is not a GGUF format", "GGUF formats start with 'gguf-'")
    return fmt.removeprefix("gguf-")


def _convert(ctx: ExportContext, out: Path, kind: str) -> dict[str, Any]:
    from edgerun.exporters.gguf import converter
    from edgerun.exporters.gguf.convert import convert

    with ctx.stage("llama.cpp converter (fetched once per llama-cpp-python version)"):
        tool = converter.ensure()
    with ctx.stage(f"llama.cpp convert_hf_to_gguf {kind}") as show:
        return convert(tool, Path(ctx.checkpoint.path), out, kind, show)


FAMILY = GGUFFamily()
