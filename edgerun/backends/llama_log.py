"""llama.cpp's own log lines, kept out of edgerun's output.

llama-cpp-python's log callback (llama_cpp._logger) maps ggml's log levels with the table of an
older ggml: in the ggml it bundles (0.3.x), WARN is 3, which that table reads as ERROR, and ERROR
is 4, read as DEBUG. A quiet Llama (`verbose=False`, logger at ERROR) therefore prints warnings
such as ``llama_context: n_ctx_seq (512) < n_ctx_train (8192) ...`` into a progress display or a
model's output, and drops real errors. `install()` replaces that callback with one that reads the
levels right: a line is printed on stderr only when the "llama-cpp-python" logger's level lets it
through (ERROR by default: errors only; a capture such as the quantizer's sets DEBUG to see
everything), and every line goes to the "edgerun.llama_cpp" logger at DEBUG (shown by `-v`).
EDGERUN_LLAMA_VERBOSE prints everything.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from typing import Any

# ggml_log_level in the bundled ggml: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5.
LEVELS = {
    0: logging.CRITICAL,
    1: logging.DEBUG,
    2: logging.INFO,
    3: logging.WARNING,
    4: logging.ERROR,
}
CONTINUE = 5

log = logging.getLogger("edgerun.llama_cpp")
_state: dict[str, Any] = {"callback": None, "last": logging.DEBUG}


def install() -> None:
    """Set the level-correct log callback on llama.cpp (once per process; safe to repeat)."""
    if _state["callback"] is not None:
        return
    import llama_cpp
    import llama_cpp._logger  # noqa: F401 - sets its callback first, so ours replaces it

    @llama_cpp.llama_log_callback  # type: ignore[misc]
    def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        route(level, text)

    _state["callback"] = callback  # ctypes calls it from C: it must stay referenced
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


def route(level: int, text: bytes) -> None:
    """Where one native log fragment goes (see the module docstring)."""
    mapped = _state["last"] if level == CONTINUE else LEVELS.get(level, logging.DEBUG)
    _state["last"] = mapped
    line = text.decode("utf-8", errors="replace")
    threshold = logging.getLogger("llama-cpp-python").level or logging.WARNING
    if os.environ.get("EDGERUN_LLAMA_VERBOSE") or mapped >= threshold:
        print(line, end="", flush=True, file=sys.stderr)
    elif line.strip():
        log.debug("%s", line.rstrip())
