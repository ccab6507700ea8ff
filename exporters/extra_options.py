"""`--extra-option TARGET.KEY=VALUE`: the escape hatch to options of the libraries an export drives
that edgerun has no flag for. Each is recorded in the manifest (export.options.extra).

- ``genai.KEY=VALUE``: one of onnxruntime-genai's builder ``--extra_options`` (e.g.
  ``genai.exclude_embeds=true``), for the ONNX formats whose graph that builder makes.
- ``edgerun.onnx_stream=false``: build the ONNX formats from the whole fp32 graph instead of
  streaming tensor by tensor (the path streaming is proven equal to; for debugging a difference).
- ``llama.KEY=VALUE``: a field of llama.cpp's ``llama_model_quantize_params`` for the GGUF quant
  types: ``pure``, ``allow_requantize`` and ``quantize_output_tensor`` (true/false),
  ``output_tensor_type`` and ``token_embedding_type`` (a ggml type name such as q8_0 or f16).

What edgerun sets itself stays edgerun's: the builder's remote-code and hub-token switches (model
code never runs), its output file name, and the quantizer's type, threads and output layout.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from edgerun.core.errors import EdgerunError

TARGETS = {
    "genai": "onnxruntime-genai's builder",
    "llama": "llama.cpp's quantizer",
    "edgerun": "edgerun's ONNX writer",
}
EDGERUN_FLAGS = ("onnx_stream",)
# the genai builder's options edgerun owns: trust (no remote code, no hub token) and its output
GENAI_RESERVED = ("hf_remote", "hf_token", "filename", "config_only", "adapter_path")
LLAMA_BOOLS = ("pure", "allow_requantize", "quantize_output_tensor")
LLAMA_TYPES = ("output_tensor_type", "token_embedding_type")
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
HINT = "write TARGET.KEY=VALUE with TARGET genai, llama or edgerun (README: Export and validation)"


def parse_extra(pairs: Iterable[str]) -> dict[str, dict[str, str]]:
    """["genai.exclude_embeds=true", ...] -> {"genai": {"exclude_embeds": "true"}, ...};
    EdgerunError naming the first malformed, unknown or reserved one."""
    extra: dict[str, dict[str, str]] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        target, dot, name = key.strip().partition(".")
        if not (eq and dot and name):
            raise EdgerunError(f"--extra-option {pair!r} is not TARGET.KEY=VALUE", HINT)
        if target not in TARGETS:
            raise EdgerunError(f"--extra-option {pair!r}: unknown target '{target}'", HINT)
        extra.setdefault(target, {})[name] = value.strip()
    check_extra(extra)
    return extra


def check_extra(extra: dict[str, Any]) -> None:
    """Refuse, before any work, a target or key the export cannot pass on."""
    for target, values in extra.items():
        if target not in TARGETS or not isinstance(values, dict):
            raise EdgerunError(f"extra options for unknown target '{target}'", HINT)
    for name in extra.get("genai", {}):
        if name in GENAI_RESERVED:
            raise EdgerunError(
                f"--extra-option genai.{name} is set by edgerun itself",
                f"edgerun owns {', '.join(GENAI_RESERVED)}; drop it",
            )
    for name, value in extra.get("llama", {}).items():
        _llama_value(name, value)
    for name, value in extra.get("edgerun", {}).items():
        if name not in EDGERUN_FLAGS:
            raise EdgerunError(
                f"--extra-option edgerun.{name}: not an option of edgerun's writer",
                f"use one of {', '.join(EDGERUN_FLAGS)}",
            )
        _flag(f"edgerun.{name}", value)


def check_targets(extra: dict[str, Any], families: Iterable[str]) -> None:
    """Refuse extra options that no requested format would use (they would be dropped silently)."""
    wanted = {"genai": "onnx", "llama": "gguf", "edgerun": "onnx"}
    present = set(families)
    for target in extra:
        if wanted[target] not in present:
            raise EdgerunError(
                f"--extra-option {target}.* is for {TARGETS[target]}, and no {wanted[target]}"
                " format was requested",
                f"add a {wanted[target]}-* format to -f, or drop the {target}.* options",
            )


def edgerun_flag(extra: dict[str, Any], name: str, default: bool) -> bool:
    """An edgerun.NAME=true/false option (a bool where the library caller passed one)."""
    value = extra.get("edgerun", {}).get(name)
    return default if value is None else _flag(f"edgerun.{name}", value)


def genai_options(extra: dict[str, Any]) -> dict[str, str]:
    """The builder's extra options given with genai.KEY=VALUE."""
    return dict(extra.get("genai", {}))


def apply_llama(params: Any, extra: dict[str, Any]) -> None:
    """Set llama.KEY=VALUE on a llama_model_quantize_params struct."""
    for name, value in extra.get("llama", {}).items():
        setattr(params, name, _llama_value(name, value))


def _flag(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in TRUE + FALSE:
        return str(value).lower() in TRUE
    raise EdgerunError(f"--extra-option {key}={value}: expected true or false", HINT)


def _llama_value(name: str, value: str) -> bool | int:
    if name in LLAMA_BOOLS:
        return _flag(f"llama.{name}", value)
    if name in LLAMA_TYPES:
        return _ggml_type(name, value)
    raise EdgerunError(
        f"--extra-option llama.{name}: not a quantizer option edgerun passes on",
        f"use one of {', '.join(LLAMA_BOOLS + LLAMA_TYPES)}",
    )


def _ggml_type(name: str, value: str) -> int:
    from gguf import GGMLQuantizationType

    known = {t.name.lower(): int(t.value) for t in GGMLQuantizationType}
    if value.lower() not in known:
        raise EdgerunError(
            f"--extra-option llama.{name}={value}: not a ggml type",
            f"use one of {', '.join(sorted(known))}",
        )
    return known[value.lower()]
