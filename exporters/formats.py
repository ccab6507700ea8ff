"""The format-family registry: every export format belongs to one family ("onnx", "gguf"), a
module exposing ``FAMILY`` that writes artifacts of its formats and runs them for validation.

Families are found through a small table of module paths imported lazily, so listing formats
never imports torch. A family whose module or dependency is missing is listed as unavailable with
the reason, never silently dropped. A third-party family is one more line in ``FAMILY_MODULES``
(edgerun.core.format_registry) or a call to :func:`register`.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from edgerun.core.errors import EdgerunError
from edgerun.core.format_registry import FAMILY_MODULES
from edgerun.exporters.validate import Thresholds

if TYPE_CHECKING:  # pragma: no cover
    from edgerun.exporters.validate import LogitsFn
    from edgerun.sources.resolve import Checkpoint


INT4_BLOCK_SIZES = (16, 32, 64, 128, 256)
ALGORITHMS = ("rtn", "hqq", "gptq")
INT8_MODES = ("weight-only", "dynamic")
BUILDERS = ("auto", "optimum", "genai")


@dataclass
class ExportOptions:
    """Options of one export call, shared by every format of it (each family reads what it uses).

    block_size / symmetric / accuracy_level / algorithm: ONNX int4 (MatMulNBits) parameters;
    recipe: the onnx-int4 mixed-precision recipe (edgerun.exporters.onnx.recipes: which MatMuls
        get 8 bits); target_kl / target_ppl_ratio: instead of a recipe, search for the smallest
        mixed int4/int8 plan whose KL (or PPL ratio) on the calibration text meets the target
        (edgerun.exporters.onnx.sensitivity), then hold it to the target on the evaluation text;
    calib_text: the calibration text of that search (None: exporters/data/calib.txt);
    imatrix: quantize with importance statistics gathered on the calibration text
        (edgerun.exporters.importance): ONNX weighted rounding, llama.cpp's imatrix; None: each
        family's default;
    gptq: onnx-int4 rounding by GPTQ over the calibration inputs' second moments
        (edgerun.exporters.onnx.gptq; needs the importance statistics); None: GPTQ_DEFAULT;
    probe: time a short greedy decode of each artifact on this machine (manifest "probe");
    int8_mode: "weight-only" (8-bit MatMulNBits) or "dynamic" (ORT quantize_dynamic);
    builder: who makes the fp32 graph the other formats start from: "auto" (genai for onnx-fp32,
        onnx-int8 and onnx-int4 where installed and supported, else optimum), "optimum" or
        "genai" (onnxruntime-genai's model builder);
    threads: CPU threads for export-time inference (None: library default);
    eval_text: a text file to validate on (None: the shipped exporters/data/eval.txt);
    window: tokens per validation window; force: write failing artifacts (passed: false);
    no_validate: skip validation (validation: null); overwrite: replace existing artifact dirs;
    keep_intermediates: keep the scratch dir (fp32 ONNX before quantization, ...);
    progress: show rich progress on stderr; thresholds: the validation gate;
    max_memory: refuse before any work when the estimated peak exceeds it (bytes; None: the
        RAM available now; edgerun.exporters.memory);
    profile_plan: the device profile's plan when export() was given a profile (manifest record);
    extra: options of the libraries an export drives that have no field here, by target
        ({"genai": {...}, "llama": {...}}; edgerun.exporters.extra_options, --extra-option).
    """

    block_size: int | None = None  # None: the onnx-int4 recipe's, else 32
    symmetric: bool | None = None  # None: asymmetric for onnx-int4 and hqq, else symmetric
    accuracy_level: int = 4
    algorithm: str = "rtn"
    recipe: str | None = None  # None: onnx.recipes.DEFAULT_RECIPE
    target_kl: float | None = None
    target_ppl_ratio: float | None = None
    calib_text: Path | None = None
    imatrix: bool | None = None
    gptq: bool | None = None
    probe: bool = True
    int8_mode: str = "weight-only"
    builder: str = "auto"
    threads: int | None = None
    eval_text: Path | None = None
    window: int = 256
    force: bool = False
    no_validate: bool = False
    overwrite: bool = False
    keep_intermediates: bool = False
    progress: bool = True
    max_memory: int | None = None  # bytes the call may use (None: the RAM available now)
    # None: the default gate for each artifact's precision (Thresholds.for_precision), with
    # gate_overrides (field name -> value) applied on top; a Thresholds object: one gate for all.
    thresholds: Thresholds | None = None
    gate_overrides: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    # set by export(profile=...): which device profile chose formats and settings, and why
    profile_plan: dict[str, Any] | None = None


class ReferenceModel:
    """The source checkpoint of one export call: its config and tokenizer (loaded on first use,
    shared by every format), and the whole model in PyTorch fp32 only for the stages that need
    it whole (`whole()`: loaded for the stage, freed after it; nothing holds it for the call).
    `model` keeps it loaded until release() (tests and scripts)."""

    def __init__(self, checkpoint_dir: Path) -> None:
        self.path = Path(checkpoint_dir)
        self._model: Any = None
        self._tokenizer: Any = None

    @property
    def model(self) -> Any:
        """transformers AutoModelForCausalLM in float32, eval mode."""
        if self._model is None:
            from edgerun.exporters.reference import load_model

            self._model = load_model(self.path)
        return self._model

    @contextlib.contextmanager
    def whole(self) -> Iterator[Any]:
        """The whole model in fp32 for one stage (optimum's tracing, the quality-target search),
        freed when the stage ends unless `model` already held it."""
        held = self._model is not None
        try:
            yield self.model
        finally:
            if not held:
                self.release()

    def release(self) -> None:
        """Drop the fp32 model (and give its memory back to the OS where the allocator can)."""
        from edgerun.exporters.stream import give_back_memory

        self._model = None
        give_back_memory()

    @property
    def tokenizer(self) -> Any:
        """transformers AutoTokenizer of the checkpoint."""
        if self._tokenizer is None:
            from edgerun.exporters.reference import load_tokenizer

            self._tokenizer = load_tokenizer(self.path)
        return self._tokenizer

    @property
    def config(self) -> dict[str, Any]:
        """config.json of the checkpoint, as a dict (no transformers import)."""
        from edgerun.core.untrusted import read_json_object

        return read_json_object(
            self.path / "config.json", "point to a Hugging Face model directory"
        )


@dataclass
class ExportContext:
    """Everything a family needs to export one format: the resolved source, the shared reference,
    the options, and a scratch directory (removed after the call unless keep_intermediates)."""

    checkpoint: Checkpoint
    reference: ReferenceModel
    options: ExportOptions
    scratch: Path
    # Called by a family to show a named stage ("export", "quantize"); set by the orchestrator.
    stage_hook: Any = None
    # {"stage", "wall_s", "peak_rss_bytes"} of every stage so far (filled by the stage hook)
    stages: list[dict[str, Any]] = field(default_factory=list)
    # the up-front memory estimate of the call (edgerun.exporters.memory), for the manifest
    memory_estimate: dict[str, Any] | None = None

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[Callable[[str], None]]:
        """Mark a long stage of the export so the progress display names it; yields a callable
        that shows a detail of its progress ("12 tensors")."""
        if self.stage_hook is None:
            yield lambda detail: None
        else:
            with self.stage_hook(name) as detail:
                yield detail


@runtime_checkable
class FormatFamily(Protocol):
    """One family of export formats (see the module docstring).

    Optional: ``check_source(fmt, options, config) -> None``, called with the checkpoint's
    config.json (a dict) before any work starts, to refuse an architecture the family cannot
    export (EdgerunError listing the supported ones); ``withheld() -> dict[str, str]``, formats
    the family knows but does not offer, with the reason (named instead of "unknown format").
    """

    prefix: str

    def formats(self) -> list[str]:
        """Format names of this family, e.g. ["onnx-fp32", "onnx-int4"]."""
        ...

    def check_options(self, fmt: str, options: ExportOptions) -> None:
        """Raise EdgerunError, before any work starts, when `options` cannot make `fmt`."""
        ...

    def export(self, fmt: str, ctx: ExportContext, out_dir: Path) -> dict[str, Any]:
        """Write the model file(s) of `fmt` into `out_dir`; return manifest fields: precision,
        quant (dict | None), builder, model_file, plus extras (e.g. "onnx": {...})."""
        ...

    def logits_fn(self, artifact_dir: Path, manifest: dict[str, Any]) -> LogitsFn:
        """Run the artifact for real: token ids of one window -> logits [len, vocab].
        During an export, `manifest` is the dict `export` returned plus "threads" (None or the
        CPU thread count to use)."""
        ...


FAMILIES: dict[str, FormatFamily] = {}
UNAVAILABLE: dict[str, str] = {}  # family prefix -> why it could not be loaded


def register(family: FormatFamily) -> FormatFamily:
    """Add (or replace) a family in the registry; returns it, so it works as a decorator too."""
    FAMILIES[family.prefix] = family
    UNAVAILABLE.pop(family.prefix, None)
    return family


def load_families() -> dict[str, FormatFamily]:
    """Import every module of FAMILY_MODULES not yet loaded; record why one is unavailable."""
    for prefix, module in FAMILY_MODULES.items():
        if prefix in FAMILIES:
            continue
        try:
            family = importlib.import_module(module).FAMILY
        except ImportError as exc:
            UNAVAILABLE[prefix] = f"{module} cannot be imported: {exc}"
            continue
        except AttributeError:
            UNAVAILABLE[prefix] = f"{module} defines no FAMILY"
            continue
        register(family)
    return FAMILIES


def all_formats() -> list[str]:
    """Every format name of every available family, in registry order."""
    return [fmt for family in load_families().values() for fmt in family.formats()]


def family_of(fmt: str) -> FormatFamily:
    """The family that makes `fmt`; EdgerunError naming why not (a withheld format's reason, an
    unavailable family's, or the closest valid names) if none does."""
    families = load_families()
    for family in families.values():
        if fmt in family.formats():
            return family
    prefix = fmt.split("-", 1)[0]
    if prefix in UNAVAILABLE:
        raise EdgerunError(
            f"format '{fmt}' is unavailable: {UNAVAILABLE[prefix]}",
            "install the extra it needs (pip install 'edgerun[export,gguf]')",
        )
    for family in families.values():
        withheld: dict[str, str] = getattr(family, "withheld", dict)()
        why = withheld.get(fmt)
        if why:
            raise EdgerunError(f"format '{fmt}' is not offered: {why}", "choose another format")
    valid = all_formats()
    close = difflib.get_close_matches(fmt, valid, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}?" if close else f"valid formats: {', '.join(valid)}"
    raise EdgerunError(f"unknown format '{fmt}'", hint)


def canonical_format(name: str) -> str:
    """`name` as the registry spells it: case and `_` / `-` are not significant
    (`gguf-Q4_K_M`, `onnx_int4`), and a bare type names its family when only one has it
    (`q4_k_m` -> `gguf-q4_k_m`). Unmatched names come back unchanged for family_of to explain."""
    key = _format_key(name)
    known = all_formats()
    exact = [fmt for fmt in known if _format_key(fmt) == key]
    bare = [fmt for fmt in known if _format_key(fmt.split("-", 1)[-1]) == key]
    match = exact or bare
    return match[0] if len(match) == 1 else name


def _format_key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


@dataclass(frozen=True)
class Format:
    """One export format as the registry knows it: its name and the family that makes it.
    Resolved once at the edge (export(), from the names given) and passed down, so nothing
    along the export looks the name up again."""

    name: str
    family: FormatFamily

    @property
    def prefix(self) -> str:
        """The family's prefix ("onnx", "gguf")."""
        return self.family.prefix


def resolve_formats(spec: str | list[str]) -> list[Format]:
    """Split a comma list of format names, look every one up once, drop duplicates (order
    kept). EdgerunError for an empty list or a name no family makes (family_of says why)."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = list(dict.fromkeys(canonical_format(s) for s in items if s.strip()))
    if not names:
        raise EdgerunError("no export format given", f"valid formats: {', '.join(all_formats())}")
    return [Format(name, family_of(name)) for name in names]


def parse_formats(spec: str | list[str]) -> list[str]:
    """The names of resolve_formats(spec), as the registry spells them."""
    return [fmt.name for fmt in resolve_formats(spec)]
