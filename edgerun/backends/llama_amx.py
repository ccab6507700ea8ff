"""llama.cpp's AMX kernels (Intel Xeon Sapphire Rapids and later) crash: keep them out of a load.

A llama-cpp-python built on a CPU with AMX (GGML_NATIVE, the default for a source build) compiles
ggml's AMX path in. It is used through llama.cpp's "extra buffer types": at load, the weights of
the types it has kernels for (q4_0, q4_1, q8_0, q4_K, q5_K, q6_K, iq4_xs) are repacked into an AMX
buffer. Measured here (Intel Xeon with amx_int8, llama-cpp-python 0.3.36 built natively): the
first llama_decode of a SmolLM2-135M q4_k_m dies with SIGSEGV in ggml_backend_amx_mul_mat, 3 runs
of 3 (`edgerun export smollm2-135m -f gguf-q4_k_m`). It is llama.cpp #20824 (closed stale,
unfixed); dspy's CI dropped the AMX variant for the same crash on Sapphire Rapids runners.

Loading with ``use_extra_bufts = false`` keeps every weight in the plain CPU buffer, so the AMX
path is never reached (nor the generic x86/ARM repack, which the same switch governs). It is set
only where the build has AMX (llama_print_system_info says AMX_INT8 = 1);
``EDGERUN_LLAMA_AMX=1`` keeps llama.cpp's default there, for a build where AMX works.
llama-cpp-python's Llama() has no keyword for it, so its default model parameters are wrapped
for the duration of the load.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

ENV = "EDGERUN_LLAMA_AMX"
_lock = threading.Lock()


def build_has_amx(llama_cpp: Any) -> bool:
    """True when this llama.cpp build has its AMX kernels compiled in (and the CPU runs them:
    ggml reports AMX_INT8 only then)."""
    try:
        info = llama_cpp.llama_print_system_info()
    except Exception:  # an old or odd build: assume no AMX
        return False
    text = info.decode(errors="replace") if isinstance(info, bytes) else str(info)
    return "AMX_INT8 = 1" in text


def avoid_amx(llama_cpp: Any) -> bool:
    """Whether loads in this process keep the weights out of llama.cpp's AMX buffers."""
    return os.environ.get(ENV, "") != "1" and build_has_amx(llama_cpp)


@contextmanager
def no_amx_buffers(llama_cpp: Any) -> Iterator[bool]:
    """Within the block, Llama() loads with use_extra_bufts = false where avoid_amx() says so.
    Yields whether it did."""
    lib: Any = getattr(llama_cpp, "llama_cpp", None)
    defaults = getattr(lib, "llama_model_default_params", None)
    if defaults is None or not avoid_amx(llama_cpp):
        yield False
        return

    def params() -> Any:
        p = defaults()
        p.use_extra_bufts = False
        return p

    with _lock:
        lib.llama_model_default_params = params
        try:
            yield True
        finally:
            lib.llama_model_default_params = defaults
