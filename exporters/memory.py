"""Say before working: the peak memory of an export call, estimated before any work from the
checkpoint's shape and the formats and options chosen, and compared with the RAM available (or
--max-memory).

The stages run one after another, so the call's peak is the largest stage's. Each stage's cost
is a small model fitted to measurements (the manifest's export.stages records every stage's
peak RSS; benchmarks/README.md, "Scale"): BASE_BYTES for the interpreter and its libraries, plus
bytes per parameter of the whole checkpoint for a stage that holds the model whole, or the
largest unit (one decoder layer, the embedding, the head) in fp32 plus its activations for a
stage that streams layer by layer. Costs are of the code as it is: a stage that streams later
(e.g. the ONNX graph build and quantization) changes its line of STAGE_BYTES_PER_PARAM.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgerun.backends.base import MAX_DEFAULT_CONTEXT
from edgerun.core.errors import EdgerunError

if TYPE_CHECKING:  # pragma: no cover
    from edgerun.exporters.formats import Format

GB = 1_000_000_000
GIB = 1 << 30  # what sizes are printed in (binary units everywhere)
# Measured: the export process after importing torch, transformers, onnxruntime and the builders.
BASE_BYTES = 900_000_000
# Stages that hold the whole model, in bytes per checkpoint parameter above BASE_BYTES. Not yet
# fitted: the one full measurement (the Qwen2.5-0.5B shape, 0.40B parameters; benchmarks/README.md
# "Scale") predates the heap trim and carried retained memory into every stage.
STAGE_BYTES_PER_PARAM: dict[str, float] = {
    "onnx build (optimum)": 14.0,  # fp32 model + traced graph + the serialized proto
    "onnx build (genai)": 10.0,  # the builder loads the model in fp32 and builds in memory
    "onnx quantize": 9.0,  # onnx.load of the fp32 graph + the quantized copy
    # the streamed ONNX build (exporters/onnx/stream.py: mapped weights, quantized tensor by
    # tensor): 1.96 GB on the Qwen2.5-0.5B shape (0.49B) and 3.05 GB on Qwen2.5-1.5B (1.54B),
    # i.e. ~1.45 GB + 1.04 B/param; 1.1 B/param over BASE_BYTES is that line, rounded up
    "onnx build + quantize (streamed)": 1.1,
    "target search": 12.0,  # the whole fp32 model, its gradients and the fake-quantized copy
    "calibrate (Fisher, whole model)": 10.0,  # the whole fp32 model and its gradients
}
# Validation (exporters/validate.py) holds a session of the artifact and, for the evaluation
# windows, the artifact's logits, the reference's log-probs and float64 log-softmax temporaries;
# the runtime checks (exporters/runtime_check.py) load the artifact once more through
# edgerun.load. Upper envelopes of every stage measured from 0.5B to 3.2B parameters
# (benchmarks/results/scale-20261207T123432Z.json, scale-20261207T224424Z.json; the model before
# them, 5 B/param of fp32 weights scaled to the artifact's bits, put validation of the
# Llama-3.2-3B shape's onnx-int8 at 5.2 GB, measured 6.9): bytes per artifact byte as loaded
# (onnxruntime's packed copy, 1.25-1.3x the file, beside its other buffers; llama.cpp's mapped
# file and repacked copy)...
# onnx-int4's factors are higher because its mixed recipe keeps some layers at 8 bits (5.7-6.1
# bits per weight where artifact_bytes_per_param counts 5.1).
LOAD_FACTOR = {"onnx-int4": 2.0, "onnx": 1.3, "gguf": 1.2}
RUNTIME_FACTOR = {"onnx-int4": 2.2, "onnx": 1.5, "gguf": 2.5}
# ...plus, at validation, this many float32 copies of the evaluation's logits (tokens x vocab)
LOGIT_COPIES = 5
# the importance-matrix calibration over the streamed pass's model: 3.20 GiB measured on the
# Qwen2.5-1.5B shape where streamed_bytes models 2.81 GiB (x1.14; 6.41 GiB before the 4-bit
# error was taken a band of rows at a time: benchmarks/results/scale-20261207T005809Z.json)
IMATRIX_CALIBRATION = 1.2
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes of a size such as "8G", "7.5GB", "8GiB", "512M" or "1000000"; EdgerunError if not
    one (powers of 1000 for k/M/G/T, of 1024 with an i: KiB, MiB, GiB, TiB)."""
    match = _SIZE.match(str(text))
    if not match:
        raise EdgerunError(f"'{text}' is not a memory size", "write it like 8G, 7.5GB or 512M")
    number, unit, binary = match.groups()
    power = "kmgt".find(unit.lower()) + 1 if unit else 0
    value = float(number) * (1024 if binary else 1000) ** power
    if value < 1:
        raise EdgerunError(f"memory size '{text}' is zero", "write it like 8G, 7.5GB or 512M")
    return int(value)


@dataclass(frozen=True)
class Shape:
    """What the estimate needs from a checkpoint: parameters in all, the largest streamed unit
    (a decoder layer, the embedding or the head), hidden and feed-forward widths, vocabulary."""

    params: int
    largest_unit: int
    hidden: int
    intermediate: int
    vocab: int
    kv_values_per_token: int = 0  # layers x 2 x KV heads x head dim (0: unknown)
    context: int = 0  # the context the runtime sizes its KV cache to (0: unknown)


def checkpoint_shape(path: Path, config: dict[str, Any]) -> Shape:
    """The Shape of the checkpoint at `path` (safetensors headers; config.json for the widths)."""
    from edgerun.sources.describe import safetensors_header

    units: dict[str, int] = {}
    for file in sorted(Path(path).glob("*.safetensors")):
        for name, tensor in safetensors_header(file).items():
            if name == "__metadata__":
                continue
            count = 1
            for dim in tensor["shape"]:
                count *= int(dim)
            layer = re.search(r"\.(?:layers|h|blocks)\.(\d+)\.", name)
            key = f"layer {layer.group(1)}" if layer else name
            units[key] = units.get(key, 0) + count
    text = config.get("text_config") or config
    hidden = int(text.get("hidden_size") or text.get("n_embd") or 0)
    heads = int(text.get("num_attention_heads") or text.get("n_head") or 0)
    kv_heads = int(text.get("num_key_value_heads") or heads)
    head_dim = int(text.get("head_dim") or (hidden // heads if heads else 0))
    layers = int(text.get("num_hidden_layers") or text.get("n_layer") or 0)
    trained = int(text.get("max_position_embeddings") or text.get("n_positions") or 0)
    return Shape(
        params=sum(units.values()),
        largest_unit=max(units.values(), default=0),
        hidden=hidden,
        intermediate=int(text.get("intermediate_size") or text.get("n_inner") or 4 * hidden),
        vocab=int(text.get("vocab_size") or 0),
        kv_values_per_token=layers * 2 * kv_heads * head_dim,
        context=min(trained, MAX_DEFAULT_CONTEXT) if trained else MAX_DEFAULT_CONTEXT,
    )


def streamed_bytes(shape: Shape, tokens: int, window: int) -> int:
    """A stage that runs the checkpoint layer by layer on `tokens` tokens in windows of
    `window` (the reference, the importance matrix): the largest unit in fp32 (and its bf16
    read), the hidden states of every window, one batch's activations, one window's log-probs."""
    from edgerun.exporters.stream import BATCH_TOKENS

    batch = min(tokens, BATCH_TOKENS)
    weights = shape.largest_unit * 6
    hidden = tokens * shape.hidden * 4 * 2
    activations = batch * (shape.intermediate * 3 + shape.hidden * 8) * 4
    head = window * shape.vocab * (4 + 8 * 3)  # logits, then float64 log-softmax temporaries
    return BASE_BYTES + weights + hidden + activations + head


def artifact_bytes_per_param(fmt: str) -> float:
    """Bytes per parameter of a format's weights: 4 for 32-bit, 2 for 16, else bits / 8 plus
    the block scales (about 0.6 bits per weight at block 32), e.g. 0.64 for int4 / q4_k_m."""
    bits = [int(b) for b in re.findall(r"\d+", fmt.split("-", 1)[-1])[:1]] or [16]
    return 4.0 if bits[0] >= 32 else 2.0 if bits[0] >= 16 else (bits[0] + 0.6) / 8


def validate_bytes(fmt: str, shape: Shape, eval_tokens: int) -> int:
    """Validation of one artifact: the artifact as loaded and the evaluation's logits."""
    weights = shape.params * artifact_bytes_per_param(fmt)
    logits = LOGIT_COPIES * 4 * eval_tokens * shape.vocab
    return BASE_BYTES + int(_factor(LOAD_FACTOR, fmt) * weights) + logits


def runtime_check_bytes(fmt: str, shape: Shape) -> int:
    """The runtime checks: the artifact loaded through edgerun.load, and for llama.cpp its f16
    KV cache at the runtime's context, allocated whole at load (onnxruntime grows its cache
    with the tokens, a few dozen here)."""
    weights = shape.params * artifact_bytes_per_param(fmt)
    kv = 0 if _family(fmt) == "onnx" else 2 * shape.kv_values_per_token * shape.context
    return BASE_BYTES + int(_factor(RUNTIME_FACTOR, fmt) * weights) + kv


def _family(fmt: str) -> str:
    return "onnx" if fmt.startswith("onnx") else "gguf"


def _factor(factors: dict[str, float], fmt: str) -> float:
    return factors.get(fmt) or factors[_family(fmt)]


def estimate(
    formats: list[str],
    builders: dict[str, str],
    options: Any,
    shape: Shape,
    eval_tokens: int,
    limit: int | None = None,
    streamed: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """The manifest's export.memory_estimate: {"peak_bytes", "peak_stage", "stages": {stage:
    bytes}, "calibration": "fisher-layers" | "fisher" | "imatrix" | None (onnx-int4's budget
    recipe: calibration_plan)} for
    exporting `formats` (ONNX ones built by builders[fmt], those in `streamed` tensor by tensor
    from the mapped checkpoint) with `options` within `limit`."""
    per_param = STAGE_BYTES_PER_PARAM
    stages: dict[str, int] = {}
    if not options.no_validate:
        stages["reference (layer by layer)"] = streamed_bytes(shape, eval_tokens, options.window)
    for fmt in formats:
        if fmt in streamed:
            stages["onnx build + quantize (streamed)"] = _whole(
                per_param["onnx build + quantize (streamed)"], shape
            )
        elif fmt.startswith("onnx"):
            stages[f"onnx build ({builders[fmt]})"] = _whole(
                per_param[f"onnx build ({builders[fmt]})"], shape
            )
            if fmt != "onnx-fp32":
                stages["onnx quantize"] = _whole(per_param["onnx quantize"], shape)
        family = _family(fmt)
        if family == "gguf":
            # llama.cpp's converter and quantizer hold about one tensor at a time (lazy): 1 GB
            # of their own plus the largest unit in fp32 (3.0 B/param measured on the 0.40B
            # shape, where the whole model is about one unit's worth of that)
            stages["gguf convert + quantize"] = BASE_BYTES + GB + 4 * shape.largest_unit
        if not options.no_validate:
            stages[f"{family} validate ({fmt})"] = validate_bytes(fmt, shape, eval_tokens)
        if not options.no_validate or options.probe:
            stages[f"runtime checks ({fmt})"] = runtime_check_bytes(fmt, shape)
    calibration = None
    if "onnx-int4" in formats:
        if options.target_kl is not None or options.target_ppl_ratio is not None:
            stages["target search"] = _whole(per_param["target search"], shape)
        elif _budget_recipe(options):
            calibration, stage, need = calibration_plan(shape, "onnx-int4" in streamed, limit)
            stages[stage] = need
    if _imatrix(options, formats) and calibration != "imatrix":  # else measured above
        # edgerun.exporters.importance: the checkpoint layer by layer over the calibration
        # text (its ~3,000 tokens in windows of 512; the head in slices of 128 tokens)
        stages["importance statistics (layer by layer)"] = streamed_bytes(shape, 3072, 128)
    if "onnx-int4" in formats and "importance statistics (layer by layer)" in stages:
        stages["importance statistics (layer by layer)"] += gram_bytes(options, shape)
    peak_stage = max(stages, key=lambda s: stages[s])
    return {
        "peak_bytes": stages[peak_stage],
        "peak_stage": peak_stage,
        "stages": stages,
        "calibration": calibration,
    }


def gram_bytes(options: Any, shape: Shape) -> int:
    """What GPTQ's second moments add to the statistics stage (edgerun.exporters.onnx.gptq):
    all layers' float32 [in, in] matrices, then their copy as they are written; 0 past
    GRAM_LIMIT (the export rounds without them) or when GPTQ is off. Layers are estimated from
    a llama-shaped layer (q and o at least 2 h^2, the MLP 3 h f: an upper bound with grouped
    k / v; matrices 3 h^2 + f^2)."""
    from edgerun.exporters.importance import GRAM_LIMIT
    from edgerun.exporters.onnx import GPTQ_DEFAULT

    if not (GPTQ_DEFAULT if options.gptq is None else options.gptq):
        return 0
    h, f = shape.hidden, shape.intermediate
    layers = max(1, (shape.params - shape.vocab * h) // (2 * h * h + 3 * h * f))
    grams = 4 * (layers * (3 * h * h + f * f) + h * h)
    return 2 * grams if grams <= GRAM_LIMIT else 0


def calibration_plan(shape: Shape, streamed: bool, limit: int | None) -> tuple[str, str, int]:
    """(how q4-mixed ranks its layers, the stage's name, its bytes): the Fisher estimate, layer
    by layer when the checkpoint streams (safetensors), else on the whole model; past `limit`,
    the importance matrix, which needs no gradients."""
    if streamed:
        # the streamed pass, plus one unit's gradients while the backward pass recomputes it,
        # plus the head's dense gradient (a tied embedding's part is its window's rows only:
        # fisher_stream._embedding_part). Qwen2.5-1.5B shape: 3.10 GiB measured, 4.2 estimated
        head = 4 * shape.vocab * shape.hidden
        fisher = streamed_bytes(shape, 1024, 128) + 4 * shape.largest_unit + head
        choice = ("fisher-layers", "calibrate (Fisher, layer by layer)", fisher)
    else:
        fisher = _whole(STAGE_BYTES_PER_PARAM["calibrate (Fisher, whole model)"], shape)
        choice = ("fisher", "calibrate (Fisher, whole model)", fisher)
    if limit is None or choice[2] <= limit:
        return choice
    # the streamed pass over the whole calibration text (it is also the export's importance
    # statistics) plus each layer's 4-bit error, taken a band of rows at a time
    imatrix = int(streamed_bytes(shape, 3072, 128) * IMATRIX_CALIBRATION)
    return "imatrix", "calibrate (importance matrix)", imatrix


def _budget_recipe(options: Any) -> bool:
    from edgerun.exporters.onnx.recipes import DEFAULT_RECIPE, get_recipe

    return get_recipe(options.recipe or DEFAULT_RECIPE).budget is not None


def _whole(bytes_per_param: float, shape: Shape) -> int:
    return BASE_BYTES + int(bytes_per_param * shape.params)


def available_bytes() -> int:
    """The RAM available to a new allocation now: MemAvailable, capped by a cgroup's limit
    (a container's memory limit is what the OOM killer enforces, not the host's RAM)."""
    from edgerun.device.cgroup import available_bytes as available

    return available()


def check_fits(
    estimated: dict[str, Any], max_memory: int | None, available: int | None = None
) -> int:
    """Refuse (EdgerunError, one line with both numbers and what lowers the need) when the
    estimate exceeds `max_memory` or, without it, the RAM available now (`available`, when the
    caller has just read it). Returns the limit."""
    limit = max_memory or available or available_bytes()
    need = int(estimated["peak_bytes"])
    if need > limit:
        where = "--max-memory" if max_memory else "available RAM"
        raise EdgerunError(
            f"this export needs about {need / GIB:.1f} GiB ({estimated['peak_stage']}) but"
            f" {where} is {limit / GIB:.1f} GiB",
            "export fewer formats per call, pass --no-validate, or raise --max-memory",
        )
    return limit


def say_before_working(
    formats: list[Format], options: Any, path: Path, config: dict[str, Any], eval_tokens: int
) -> dict[str, Any]:
    """Estimate the call's peak memory, refuse when it does not fit (check_fits), and return
    the manifest's export.memory_estimate (with "limit_bytes", what it was compared with)."""
    builders = {}
    for fmt in formats:
        if fmt.prefix == "onnx":
            from edgerun.exporters.onnx import resolve_builder

            builders[fmt.name] = resolve_builder(fmt.name, options, config)
    wanted = options.max_memory
    wanted = parse_size(wanted) if isinstance(wanted, str) else wanted
    limit = wanted or available_bytes()
    shape = checkpoint_shape(path, config)
    streamed = frozenset(f for f in builders if _streams(f, builders[f], options, path))
    names = [fmt.name for fmt in formats]
    found = estimate(names, builders, options, shape, eval_tokens, limit, streamed)
    found["limit_bytes"] = check_fits(found, wanted, limit)  # the same reading of the RAM
    return found


def _streams(fmt: str, builder: str, options: Any, path: Path) -> bool:
    """Whether the ONNX family will build `fmt` tensor by tensor (exporters/onnx/stream.py)."""
    from edgerun.exporters.onnx import streamed_refusal
    from edgerun.exporters.onnx.formats import FORMATS

    return streamed_refusal(FORMATS[fmt], builder, options, path) is None


def describe(found: dict[str, Any]) -> str:
    """One line for the plan: the estimated peak, its stage, and the limit."""
    return (
        f"memory: about {found['peak_bytes'] / GIB:.1f} GiB at peak ({found['peak_stage']});"
        f" limit {found['limit_bytes'] / GIB:.1f} GiB"
    )


def _imatrix(options: Any, formats: list[str]) -> bool:
    """Whether some format of the call is quantized with the importance statistics."""
    from edgerun.exporters import gguf
    from edgerun.exporters import onnx as onnx_family

    for fmt in formats:
        if fmt.startswith("gguf-") and gguf.uses_imatrix(options, fmt.removeprefix("gguf-")):
            return True
        if fmt.startswith("onnx-") and onnx_family.format_uses_imatrix(fmt, options):
            return True
    return False
