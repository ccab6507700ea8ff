"""llama.cpp quantization types and the call into llama.cpp's own quantizer (llama-cpp-python).

The available types are read from the installed llama.cpp (`LLAMA_FTYPE_MOSTLY_*` constants of
llama-cpp-python); when it is not installed, from gguf-py's mirror of the same enum, so the
format list stays stable and the missing extra is reported by `check_options`.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from edgerun.core.errors import EdgerunError, require

FLOAT_FTYPES = {"F16", "BF16"}  # written directly by the converter, not quantized
# llama.cpp refuses these without an importance matrix (edgerun.exporters.importance, made
# with --imatrix). iq2_m: its recipe puts IQ2_S on tensors with 256-multiple rows.
NEEDS_IMATRIX = ("iq1_s", "iq1_m", "iq2_xxs", "iq2_xs", "iq2_s", "iq2_m", "q2_k_s")
# Types llama.cpp offers that edgerun does not export, and why (name -> reason).
EXCLUDED: dict[str, str] = {
    # Ternary types, meaningful only for BitNet-style ternary-trained weights.
    "tq1_0": "for ternary (BitNet) models only",
    "tq2_0": "for ternary (BitNet) models only",
    # Quantizes only mixture-of-experts expert tensors.
    "mxfp4_moe": "for mixture-of-experts models only",
    # Newer experimental types: llama.cpp's quantizer failed on the tiny test fixtures (nvfp4,
    # q1_0: rows must be multiples of 128), and gguf-py 0.19 cannot read q2_0 back.
    "nvfp4": "experimental (NVIDIA FP4); quantizer failed on the test fixtures",
    "q1_0": "experimental 1-bit type",
    "q2_0": "experimental 2-bit type gguf-py cannot read back",
}


def _ftype_constants() -> dict[str, int]:
    try:
        import llama_cpp
    except ImportError:
        try:
            import gguf
        except ImportError:
            return {}
        return {
            m.name.removeprefix("MOSTLY_"): m.value
            for m in gguf.LlamaFileType
            if m.name.startswith("MOSTLY_")
        }
    prefix = "LLAMA_FTYPE_MOSTLY_"
    return {
        k.removeprefix(prefix): getattr(llama_cpp, k)
        for k in dir(llama_cpp)
        if k.startswith(prefix)
    }


def quant_types() -> dict[str, int]:
    """Lower-case llama.cpp quant type name -> llama_ftype value, best quality first."""
    types = {
        name.lower(): value
        for name, value in _ftype_constants().items()
        if name not in FLOAT_FTYPES and name.lower() not in EXCLUDED
    }
    return dict(sorted(types.items(), key=lambda kv: (-_bits(kv[0]), kv[0])))


def _bits(name: str) -> int:
    digits = "".join(c for c in name.split("_")[0] if c.isdigit())
    return int(digits) if digits else 0


def quantize(
    src: Path,
    dst: Path,
    qtype: str,
    threads: int | None,
    imatrix: dict[str, Any] | None = None,
    overrides: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Quantize GGUF `src` to `dst` with llama.cpp's llama_model_quantize.

    imatrix: GGUF tensor name -> importance vector; overrides: tensor-name regex -> ggml type
    name (edgerun.exporters.gguf.imatrix); extra: the export's --extra-option values (its llama.*
    ones set quantizer fields, edgerun.exporters.extra_options); progress: called with
    `tensor 12/291` as llama.cpp starts each tensor. Writes `<dst>.partial` and renames it when
    complete.
    Raises EdgerunError for an unknown type or when llama.cpp reports failure.
    """
    require("llama_cpp", "gguf")
    import llama_cpp

    types = quant_types()
    if qtype not in types:
        raise EdgerunError(
            f"unknown GGUF quantization type '{qtype}'",
            f"available: {', '.join(types)}",
        )
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = types[qtype]
    params.nthread = threads or os.cpu_count() or 1
    from edgerun.exporters.extra_options import apply_llama

    apply_llama(params, extra or {})
    from edgerun.exporters.gguf.imatrix import apply

    alive = apply(params, imatrix, overrides)  # ctypes arrays read by llama.cpp: keep them
    partial = dst.with_name(dst.name + ".partial")
    try:
        with captured_stderr(partial.with_name(partial.name + ".log"), _counter(progress)) as log:
            rc = llama_cpp.llama_model_quantize(
                str(src).encode(), str(partial).encode(), ctypes.byref(params)
            )
        if rc != 0:
            lines = [line.strip() for line in log if line.strip()]
            errors = [line for line in lines if "error" in line.lower() or "fail" in line.lower()]
            last = (errors or lines or ["no log"])[-1]
            raise EdgerunError(
                f"llama.cpp could not quantize to {qtype}: {last.strip()}",
                f"try another type; available: {', '.join(types)}",
            )
        os.replace(partial, dst)
    finally:
        partial.unlink(missing_ok=True)
        del alive


def describe(path: Path) -> dict[str, Any]:
    """What a GGUF file holds, read back from it: architecture, tokenizer facts, and how many
    tensors of each ggml type (k-quants fall back per tensor when a row is not a multiple of
    256, so the file type alone does not say what was written)."""
    import gguf

    reader = gguf.GGUFReader(path)

    def field(key: str) -> Any:
        f = reader.get_field(key)
        return None if f is None else f.contents()

    counts: dict[str, int] = {}
    for tensor in reader.tensors:
        counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
    return {
        "architecture": field("general.architecture"),
        "tokenizer_pre": field("tokenizer.ggml.pre"),
        "bos_token_id": field("tokenizer.ggml.bos_token_id"),
        "eos_token_id": field("tokenizer.ggml.eos_token_id"),
        "add_bos": field("tokenizer.ggml.add_bos_token"),
        "tensor_types": dict(sorted(counts.items())),
    }


# llama.cpp's quantizer logs `[  12/ 291]  blk.0.attn_k.weight - [...], type = ...` per tensor.
_TENSOR = re.compile(r"\[\s*(\d+)/\s*(\d+)\]")


def _counter(progress: Callable[[str], None] | None) -> Callable[[str], None] | None:
    """What watches the quantizer's log for its tensor count: `progress("tensor 12/291")`."""
    if progress is None:
        return None

    def watch(text: str) -> None:
        found = _TENSOR.search(text)
        if found:
            progress(f"tensor {int(found[1])}/{int(found[2])}")

    return watch


class _Watched(io.TextIOBase):
    """A text stream that writes to `stream` and shows each piece written to `watch`."""

    def __init__(self, stream: Any, watch: Callable[[str], None]) -> None:
        self.stream, self.watch = stream, watch

    def write(self, text: str) -> int:
        self.watch(text)
        return int(self.stream.write(text))

    def flush(self) -> None:
        self.stream.flush()


@contextlib.contextmanager
def captured_stderr(log: Path, watch: Callable[[str], None] | None = None) -> Iterator[list[str]]:
    """Send file descriptor 2 (where llama.cpp's quantizer prints its per-tensor fallback
    warnings) to a temporary `log` for the duration; yields a list that holds the captured
    lines afterwards; `watch` sees each piece of llama.cpp's log as it is written (for
    progress). With EDGERUN_LLAMA_VERBOSE set, nothing is captured."""
    lines: list[str] = []
    if os.environ.get("EDGERUN_LLAMA_VERBOSE"):
        yield lines
        return
    import logging

    from edgerun.backends.llama_log import install

    install()  # the log callback that reads this logger (edgerun.backends.llama_log)
    # Everything goes to the log file, so let every level through.
    logger = logging.getLogger("llama-cpp-python")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        # Both in append mode: llama.cpp writes to fd 2, llama-cpp-python's log callback to
        # sys.stderr (which pytest or a notebook may have replaced).
        with open(log, "ab") as fh, open(log, "a", encoding="utf-8") as text:
            os.dup2(fh.fileno(), 2)
            python_stderr, sys.stderr = sys.stderr, _Watched(text, watch) if watch else text
            try:
                yield lines
            finally:
                sys.stderr.flush()
                sys.stderr = python_stderr
                os.dup2(saved, 2)
        lines.extend(log.read_text(errors="replace").splitlines())
    finally:
        os.close(saved)
        logger.setLevel(level)
        log.unlink(missing_ok=True)


def quiet_llama() -> None:
    """Route llama.cpp's log through llama-cpp-python's logger at ERROR level (what
    `Llama(verbose=False)` does) unless EDGERUN_LLAMA_VERBOSE is set."""
    import logging

    from edgerun.backends.llama_log import install

    install()  # the log callback that reads this logger, levels read right
    verbose = bool(os.environ.get("EDGERUN_LLAMA_VERBOSE"))
    logging.getLogger("llama-cpp-python").setLevel(logging.DEBUG if verbose else logging.ERROR)
