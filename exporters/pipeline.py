"""The export orchestrator: source -> one validated artifact directory per format.

For every format: export into a temporary sibling of OUT/<format>, copy the tokenizer, generation
and chat-template files, run the artifact against the PyTorch reference, gate it, write the
manifest, rename into place. A format that fails the gate is not written unless `force`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgerun.bench.memory import PeakRss
from edgerun.core.errors import EdgerunError
from edgerun.core.home import atomic_dir, check_writable, make_scratch_dir, write_errors_reported
from edgerun.core.leftovers import sweep_stale
from edgerun.core.manifest import file_entries, write_manifest
from edgerun.core.progress import stage_printer
from edgerun.exporters import memory, report
from edgerun.exporters.extra_options import check_extra, check_targets
from edgerun.exporters.families import check_architecture
from edgerun.exporters.fidelity_check import ship_reference
from edgerun.exporters.formats import (
    ExportContext,
    ExportOptions,
    Format,
    ReferenceModel,
    resolve_formats,
)
from edgerun.exporters.runtime_check import runtime_checks
from edgerun.exporters.validate import Reference, Thresholds
from edgerun.sources.checkpoint import SIDE_FILES, checkpoint_file


@dataclasses.dataclass
class ExportResult:
    """The outcome of one format: where it was written (None if not), its validation and cost."""

    format: str
    path: Path | None
    written: bool
    passed: bool | None  # None: not validated
    validation: dict[str, Any] | None = None
    manifest: dict[str, Any] | None = None
    reason: str | None = None
    size_bytes: int | None = None
    wall_s: float | None = None

    @property
    def status(self) -> str:
        if self.passed is None:
            return "not validated" if self.written else "error"
        if self.passed:
            return "pass"
        return "FAIL, forced" if self.written else "FAIL, not written"


class _GateFailed(Exception):
    """An artifact that failed validation or a runtime check, not to be written."""

    def __init__(self, validation: dict[str, Any] | None, failures: list[str] | None = None):
        reasons = validation["reasons"] if validation is not None else failures or []
        super().__init__("; ".join(reasons))
        self.validation = validation


def export(
    source: str,
    formats: str | list[str] | None,
    out_dir: str | Path,
    options: ExportOptions | None = None,
    *,
    profile: str | None = None,
    explicit: set[str] | None = None,
    **kwargs: Any,
) -> list[ExportResult]:
    """Export `source` (anything `edgerun pull` accepts) to each format under out_dir/<format>.

    Options come as an ExportOptions or as its fields by keyword. With `profile` (an id, a TOML
    path, or "detect"), formats default to the device's preferred ones and its [export] settings
    apply to the options not in `explicit` (default: the keyword options given, or the fields of
    `options` that differ from the defaults); the plan and its reasons go into each manifest.
    Bad inputs (unknown format, bad option, existing output directory, eval text too short,
    unsupported architecture) raise EdgerunError before any work starts. Returns one
    ExportResult per format. Each format name is looked up once, here (resolve_formats); the
    Format objects travel down.
    """
    chosen = resolve_formats(formats) if formats else None
    if profile is not None:
        from edgerun.exporters.profile_plan import plan as profile_plan

        if explicit is None:
            explicit = set(kwargs) if options is None else _changed_fields(options)
        plan = profile_plan(profile, [f.name for f in chosen] if chosen else None, explicit)
        chosen = chosen or resolve_formats(plan.formats)
        kwargs = {**plan.settings, **kwargs, "profile_plan": plan.to_json()}
    elif not chosen:
        raise EdgerunError("no formats to export", "pass -f FORMATS, or --profile ID|detect")
    opts = _options(options, kwargs)
    for fmt in chosen:
        fmt.family.check_options(fmt.name, opts)
    check_extra(opts.extra)
    check_targets(opts.extra, {fmt.prefix for fmt in chosen})
    out = Path(out_dir)
    _check_outputs(out, [fmt.name for fmt in chosen], opts.overwrite)
    check_writable(out)  # before the expensive reference run, not after it

    from edgerun.sources.resolve import resolve

    console = _console(opts)
    if console and opts.profile_plan:
        for reason in opts.profile_plan["reasons"]:
            console.print(f"[dim]{reason}[/]")
    ckpt = resolve(source, progress=opts.progress)
    ref_model = ReferenceModel(ckpt.path)
    refused = _check_sources(chosen, opts, ref_model.config)
    check_architecture(ref_model.config)  # before any tool picks its code by it
    stages: list[dict[str, Any]] = []  # every stage's cost, into each manifest
    hook = report.measured(stage_printer(console) if console else report.no_stage, stages)
    source_info = _source_identity(ckpt)
    eval_text = None if opts.no_validate else _eval_tokens(ref_model, opts)
    wanted = [fmt for fmt in chosen if fmt.name not in refused]
    tokens = 0 if eval_text is None else len(eval_text[1])
    estimate = memory.say_before_working(wanted, opts, ckpt.path, ref_model.config, tokens)
    if console:
        console.print(f"[dim]{memory.describe(estimate)}[/]")
    out.mkdir(parents=True, exist_ok=True)
    sweep_stale(out)  # scratch and temporary dirs of killed exports into the same directory
    scratch = make_scratch_dir(out)
    ctx = ExportContext(ckpt, ref_model, opts, scratch, hook, stages, memory_estimate=estimate)
    try:
        reference = None if eval_text is None else _reference(ctx, *eval_text)
        results = []
        for fmt in chosen:
            if fmt.name in refused:
                results.append(ExportResult(fmt.name, None, False, None, reason=refused[fmt.name]))
                continue
            if console:
                console.print(f"[bold]{fmt.name}[/]")
            results.append(_export_one(fmt, ctx, out, reference, source_info))
    finally:
        if opts.keep_intermediates:
            if console:
                console.print(f"intermediates kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return results


def _check_sources(
    formats: list[Format], opts: ExportOptions, config: dict[str, Any]
) -> dict[str, str]:
    """Ask each format's family whether it can export this architecture. Returns format name ->
    why not for the ones that cannot (reported per format while the others are made); raises
    the first refusal when no format can be made, before any work."""
    refused: dict[str, str] = {}
    first: EdgerunError | None = None
    for fmt in formats:
        check = getattr(fmt.family, "check_source", None)
        try:
            if check is not None:
                check(fmt.name, opts, config)
        except EdgerunError as exc:
            refused[fmt.name] = str(exc)
            first = first or exc
    if first is not None and len(refused) == len(formats):
        raise first
    return refused


def _options(options: ExportOptions | None, kwargs: dict[str, Any]) -> ExportOptions:
    if options is not None and kwargs:
        return dataclasses.replace(options, **kwargs)
    try:
        return options or ExportOptions(**kwargs)
    except TypeError as exc:
        known = ", ".join(f.name for f in dataclasses.fields(ExportOptions))
        raise EdgerunError(f"bad export option: {exc}", f"known options: {known}") from exc


def _changed_fields(options: ExportOptions) -> set[str]:
    """The fields of `options` that differ from ExportOptions' defaults."""
    default = ExportOptions()
    return {
        f.name
        for f in dataclasses.fields(ExportOptions)
        if getattr(options, f.name) != getattr(default, f.name)
    }


def _check_outputs(out: Path, names: list[str], overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise EdgerunError(f"{out} exists and is not a directory", "choose another -o directory")
    for fmt in names:
        if (out / fmt).exists() and not overwrite:
            raise EdgerunError(f"{out / fmt} already exists", "pass --overwrite to replace it")


def _console(opts: ExportOptions) -> Any:
    if not opts.progress:
        return None
    from rich.console import Console

    return Console(stderr=True)


def _eval_tokens(ref_model: ReferenceModel, opts: ExportOptions) -> tuple[str, list[int]]:
    """The eval text and its token ids, failing early (before any work) when it is too short."""
    from edgerun.exporters.reference import eval_token_ids, read_eval_text
    from edgerun.exporters.validate import check_eval_tokens

    text = read_eval_text(opts.eval_text)
    ids = eval_token_ids(ref_model.tokenizer, text)
    check_eval_tokens(len(ids))
    return text, ids


def _reference(ctx: ExportContext, text: str, ids: list[int]) -> Reference:
    """The PyTorch fp32 reference on the eval text, one decoder layer at a time, its log-probs
    kept in the scratch directory."""
    import torch

    from edgerun.exporters.reference import streamed_reference

    opts = ctx.options
    threads = torch.get_num_threads()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    try:
        with ctx.stage(f"reference (PyTorch fp32, layer by layer, {len(ids)} tokens)") as detail:
            return streamed_reference(
                ctx.reference.path, ids, text, opts.window, ctx.scratch, detail
            )
    finally:
        torch.set_num_threads(threads)


def _export_one(
    fmt: Format,
    ctx: ExportContext,
    out: Path,
    reference: Reference | None,
    source_info: dict[str, Any],
) -> ExportResult:
    opts, family = ctx.options, fmt.family
    start = time.perf_counter()
    try:
        with (
            write_errors_reported(out),  # a full disk is reported as one, after the cleanup
            atomic_dir(out / fmt.name, overwrite=opts.overwrite) as tmp,
            PeakRss(interval_s=0.05) as rss,
        ):
            fields = family.export(fmt.name, ctx, tmp)
            copy_side_files(ctx.checkpoint.path, tmp)
            run_fields = {**fields, "threads": opts.threads}
            validation = fidelity = None
            if reference is not None:
                gate = _gate(opts, fields)
                with ctx.stage("validate (artifact vs PyTorch fp32)") as detail:
                    # unnamed, so its session is freed as scoring ends: kept in a local, it
                    # lived on through the runtime checks' two loads of the same artifact
                    scored = reference.score(family.logits_fn(tmp, run_fields), gate, detail)
                validation = scored.to_json()
                if not scored.passed and not opts.force:
                    raise _GateFailed(validation)
                fidelity = ship_reference(tmp, reference, gate)  # before the files are hashed
            wall = time.perf_counter() - start
            manifest = _manifest(fmt, fields, ctx, tmp, source_info, validation, wall, rss)
            manifest["fidelity"] = fidelity
            manifest["size"] = report.model_size(tmp, manifest["model_file"], ctx.checkpoint.path)
            write_manifest(tmp, manifest)  # edgerun.load reads it
            failures = runtime_checks(tmp, family, run_fields, ctx, reference, manifest)
            if failures and not opts.force:
                raise _GateFailed(validation, failures)
            # the runtime checks' stage and peak too (they load the artifact twice more)
            manifest["export"]["stages"] = list(ctx.stages)
            manifest["export"]["peak_rss_bytes"] = max(
                manifest["export"]["peak_rss_bytes"], rss.peak
            )
            write_manifest(tmp, manifest)
    except _GateFailed as failed:
        return ExportResult(
            fmt.name,
            None,
            written=False,
            passed=False,
            validation=failed.validation,
            reason=str(failed),
            wall_s=time.perf_counter() - start,
        )
    except EdgerunError as exc:
        return ExportResult(
            fmt.name, None, False, None, reason=str(exc), wall_s=time.perf_counter() - start
        )
    path = out / fmt.name
    reasons = validation["reasons"] if validation else failures
    return ExportResult(
        fmt.name,
        path,
        written=True,
        passed=_passed(validation, failures),
        validation=validation,
        manifest=manifest,
        reason="; ".join(reasons) if reasons else None,
        size_bytes=report.artifact_bytes(path),
        wall_s=wall,
    )


def _passed(validation: dict[str, Any] | None, failures: list[str]) -> bool | None:
    """The result's verdict: the validation's, else False when a runtime check failed, else
    None (not validated)."""
    if validation is not None:
        return bool(validation["passed"])
    return False if failures else None


def copy_side_files(checkpoint: Path, artifact: Path) -> list[str]:
    """Copy tokenizer, generation-config, chat-template and config files the family did not
    write itself; returns the names copied. EdgerunError for one that leads out of the
    checkpoint (a symbolic link to another file of the machine)."""
    copied = []
    for name in SIDE_FILES:
        src = checkpoint_file(checkpoint, name)
        if src.is_file() and not (artifact / name).exists():
            shutil.copyfile(src, artifact / name)
            copied.append(name)
    return copied


def _manifest(
    fmt: Format,
    fields: dict[str, Any],
    ctx: ExportContext,
    tmp: Path,
    source_info: dict[str, Any],
    validation: dict[str, Any] | None,
    wall: float,
    rss: PeakRss,
) -> dict[str, Any]:
    """Every field of the manifest schema (edgerun.core.manifest), family extras included."""
    from edgerun import __version__

    extras = dict(fields)
    libraries = {"edgerun": __version__, **extras.pop("libraries", {})}
    config = ctx.reference.config
    manifest: dict[str, Any] = {
        "format": fmt.name,
        "family": fmt.prefix,
        "precision": extras.pop("precision"),
        "quant": extras.pop("quant", None),
        "builder": extras.pop("builder"),
        "model_file": extras.pop("model_file"),
        "source": source_info,
        "architecture": (config.get("architectures") or [None])[0],
        "model_type": config.get("model_type"),
        "context_length": config.get("max_position_embeddings"),
        "files": file_entries(tmp),
        "libraries": libraries,
        "export": {
            "wall_s": round(wall, 3),
            "peak_rss_bytes": rss.peak,
            "stages": list(ctx.stages),
            "memory_estimate": ctx.memory_estimate,
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "options": _options_json(ctx.options),
        },
    }
    manifest.update(extras)
    manifest["validation"] = validation
    return manifest


def _gate(opts: ExportOptions, fields: dict[str, Any]) -> Thresholds:
    """The explicit gate, else the default for this artifact's precision plus any overrides;
    a quality target (--target-kl / --target-ppl-ratio) replaces its metric's bound."""
    gate = opts.thresholds or dataclasses.replace(
        Thresholds.for_precision(fields["precision"]), **opts.gate_overrides
    )
    target = ((fields.get("quant") or {}).get("recipe") or {}).get("target")
    if target is not None:  # the held-out check of a quality-targeted export
        field_name = "max_mean_kl" if target["metric"] == "kl" else "max_ppl_ratio"
        gate = dataclasses.replace(gate, **{field_name: target["value"]})
    return gate


def _options_json(opts: ExportOptions) -> dict[str, Any]:
    data = dataclasses.asdict(opts)
    data["eval_text"] = str(opts.eval_text) if opts.eval_text else None
    data["thresholds"] = dataclasses.asdict(opts.thresholds) if opts.thresholds else None
    for key in ("progress", "overwrite", "keep_intermediates"):
        data.pop(key)
    return data


def _source_identity(ckpt: Any) -> dict[str, Any]:
    """Where the model came from and the sha256 of its weights (one hash over all weight files)."""
    import hashlib

    from edgerun.core.integrity import sha256_file
    from edgerun.sources.checkpoint import WEIGHT_GLOBS

    files = sorted({f for g in WEIGHT_GLOBS for f in ckpt.path.glob(g) if f.is_file()})
    hashes = {f.name: sha256_file(f) for f in files}
    combined = (
        next(iter(hashes.values()))
        if len(hashes) == 1
        else hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()
    )
    return {
        "spec": ckpt.source,
        "kind": ckpt.kind,
        "path": str(ckpt.path),
        "revision": ckpt.revision,
        "gguf_sha256": ckpt.gguf_sha256,
        "weights_sha256": combined,
        "weights_files": hashes,
    }
