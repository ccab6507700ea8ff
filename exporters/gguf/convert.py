"""HF checkpoint directory -> GGUF (f32 / f16 / bf16) with llama.cpp's own converter.

The converter (edgerun.exporters.gguf.converter) runs in a subprocess
(edgerun.exporters.gguf.convert_main) so its gguf-py, the one matching the llama.cpp that will run
the file, never meets the installed one. It writes `<out>.partial`, renamed when complete, so an
interrupted conversion never leaves a file that looks finished. Its log is read line by line:
tensors written feed the progress display, the last error line becomes a one-line EdgerunError.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgerun.core.errors import EdgerunError
from edgerun.core.untrusted import read_json
from edgerun.exporters.gguf.convert_main import ERROR_PREFIX, PRE_NOTE_PREFIX, VOCAB_NOTE_PREFIX
from edgerun.exporters.gguf.converter import Converter
from edgerun.sources.remote_code import code_free_view

OUT_TYPES = ("f32", "f16", "bf16")
# "INFO:hf-to-gguf:blk.0.attn_q.weight,  torch.float32 --> F16, shape = {64, 64}"
_TENSOR_LINE = re.compile(r"^INFO:hf-to-gguf:(\S+),\s+\S+ --> (\S+), shape")
_ARCH_LINE = re.compile(r"^INFO:hf-to-gguf:Model architecture: (\S+)")
_UNSUPPORTED = re.compile(r"Model (\S+) is not supported")


def convert(
    converter: Converter,
    checkpoint: Path,
    out: Path,
    out_type: str,
    show: Callable[[str], None] = lambda detail: None,
) -> dict[str, Any]:
    """Write `out` as a GGUF of the checkpoint directory in `out_type`.

    Returns a summary (HF architecture, tensors written, pre-tokenizer note, converter
    provenance). Raises EdgerunError naming the converter's reason on failure.
    """
    if out_type not in OUT_TYPES:
        raise EdgerunError(
            f"unknown GGUF float type '{out_type}'", f"one of {', '.join(OUT_TYPES)}"
        )
    partial = out.with_name(out.name + ".partial")
    partial.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix=".convert-", dir=out.parent) as view:
        source = _checkpoint_view(Path(checkpoint), Path(view))
        return _run(converter, source, out, partial, out_type, show)


def _checkpoint_view(checkpoint: Path, view: Path) -> Path:
    """The checkpoint as the converter should read it: links to its files, less its Python files
    and every `auto_map` (edgerun.sources.remote_code), so no loader the converter calls can find model
    code; and with the files the converter needs changed written beside them (the checkpoint is
    never modified): a GGUF quirk's config.json keys (edgerun.exporters.gguf.quirks.config_fixes)
    and the tokenizer change of `_tokenizer_change`."""
    changed = {**_tokenizer_change(checkpoint), **_config_change(checkpoint)}
    replaced = {}
    for name, data in changed.items():
        data.pop("auto_map", None)  # a rewritten file is never a way back to model code
        replaced[name] = json.dumps(data, ensure_ascii=False).encode("utf-8")
    return code_free_view(checkpoint, view, replaced)


def _tokenizer_change(checkpoint: Path) -> dict[str, Any]:
    """transformers (4.57) rebuilds a GGUF's byte-level BPE vocabulary with `byte_fallback:
    true`, which llama.cpp's converter takes for a SentencePiece-style vocabulary (writing one
    llama.cpp cannot load). Byte-level BPE holds every byte in its alphabet, so the flag never
    changes a tokenization: such a tokenizer.json is shown with the flag cleared."""
    tokenizer_json = checkpoint / "tokenizer.json"
    if not tokenizer_json.is_file():
        return {}
    data = read_json(tokenizer_json, "fix or replace the checkpoint's tokenizer.json")
    model: Any = data.get("model") if isinstance(data, dict) else None
    byte_level = isinstance(data, dict) and "ByteLevel" in json.dumps(data.get("pre_tokenizer"))
    if not (isinstance(model, dict) and model.get("type") == "BPE" and model.get("byte_fallback")):
        return {}
    if not byte_level:
        return {}
    model["byte_fallback"] = False
    return {"tokenizer.json": data}


def _config_change(checkpoint: Path) -> dict[str, Any]:
    """config.json with the keys a GGUF quirk gives the converter, or nothing to change."""
    from edgerun.core.untrusted import read_json_object
    from edgerun.exporters.gguf.quirks import config_fixes

    path = checkpoint / "config.json"
    if not path.is_file():
        return {}
    config = read_json_object(path, "the checkpoint's config.json is damaged")
    fixes = config_fixes(config)
    return {"config.json": {**config, **fixes}} if fixes else {}


def _run(
    converter: Converter,
    checkpoint: Path,
    out: Path,
    partial: Path,
    out_type: str,
    show: Callable[[str], None],
) -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "edgerun.exporters.gguf.convert_main",
        str(converter.root), str(checkpoint), str(partial), out_type,
    ]  # fmt: skip
    # no bytecode written into the converter's cache: it is re-verified file by file before use
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("NO_LOCAL_GGUF", None)  # the converter must use its own gguf-py
    verbose = bool(os.environ.get("EDGERUN_LLAMA_VERBOSE"))
    tail: deque[str] = deque(maxlen=40)
    summary: dict[str, Any] = {
        "tensors": 0, "pre_tokenizer_note": None, "vocabulary_note": None, "hf_architecture": None,
    }  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, env=env, errors="replace",
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.rstrip("\n")
            tail.append(line)
            if verbose:
                print(line, file=sys.stderr)
            if match := _TENSOR_LINE.match(line):
                summary["tensors"] += 1
                show(f"{summary['tensors']} tensors ({match.group(1)})")
            elif match := _ARCH_LINE.match(line):
                summary["hf_architecture"] = match.group(1)
            elif line.startswith(PRE_NOTE_PREFIX):
                summary["pre_tokenizer_note"] = line.removeprefix(PRE_NOTE_PREFIX)
            elif line.startswith(VOCAB_NOTE_PREFIX):
                summary["vocabulary_note"] = line.removeprefix(VOCAB_NOTE_PREFIX)
        code = proc.wait()
    except BaseException:  # Ctrl-C: stop the converter, leave nothing behind
        proc.kill()
        proc.wait()
        partial.unlink(missing_ok=True)
        raise
    if code != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        raise _failure(list(tail), code)
    os.replace(partial, out)
    return {**summary, **converter.provenance()}


def _failure(tail: list[str], code: int) -> EdgerunError:
    for line in reversed(tail):
        if line.startswith(ERROR_PREFIX):
            message, _, hint = line.removeprefix(ERROR_PREFIX).partition(" | ")
            return EdgerunError(
                f"llama.cpp's converter failed: {message}",
                hint or "this family or checkpoint is not one llama.cpp converts; export to ONNX",
            )
        if match := _UNSUPPORTED.search(line):
            return EdgerunError(
                f"llama.cpp's converter does not support the architecture {match.group(1)}",
                "export to ONNX instead (edgerun export --list-architectures)",
            )
    last = next((line for line in reversed(tail) if line.strip()), "no output")
    return EdgerunError(
        f"llama.cpp's converter exited with code {code}: {last.strip()}",
        "run with EDGERUN_LLAMA_VERBOSE=1 for its full log, or export to ONNX",
    )
