"""The export's importance statistics and per-tensor types, handed to llama.cpp's quantizer.

llama-cpp-python (0.3.35+) exposes the two fields of `llama_model_quantize_params` that
llama.cpp's `llama-quantize --imatrix / --tensor-type` fill: `imatrix`, an array of
`llama_model_imatrix_data` {GGUF tensor name, float vector of ne[0]} ended by a null name, and
`tt_overrides`, an array of `llama_model_tensor_override` {regex, ggml type} ended likewise.
The importance vectors (edgerun.exporters.importance) are keyed by the reference's module names;
gguf-py's TensorNameMap gives each one's GGUF name for the architecture the converter wrote,
and only names the file really holds, with the right row length, are passed on.
"""

from __future__ import annotations

import ctypes
import re
from pathlib import Path
from typing import Any

import numpy as np

from edgerun.core.errors import EdgerunError


def gguf_names(module_names: list[str], path: Path) -> dict[str, str]:
    """Reference module name -> GGUF tensor name, for the modules whose weight `path` holds
    (TensorNameMap of the file's general.architecture and block count)."""
    import gguf

    from edgerun.sources.gguf_header import read_header

    header = read_header(path)
    arch_name = str(header.metadata.get("general.architecture"))
    arch = next((a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch_name), None)
    if arch is None:
        raise EdgerunError(
            f"gguf-py {_version()} does not know the architecture '{arch_name}'",
            "export without the importance matrix: --no-imatrix",
        )
    blocks = int(header.metadata.get(f"{arch_name}.block_count", 0))
    name_map = gguf.get_tensor_name_map(arch, blocks)
    out = {}
    for module in module_names:
        name = name_map.get_name(f"{module}.weight", try_suffixes=(".weight",))
        if name is not None and name in header.tensors:
            out[module] = name
    return out


def _version() -> str:
    from edgerun.core.versions import versions

    return str(versions(["gguf"]).get("gguf"))


def imatrix_entries(values: dict[str, np.ndarray], path: Path) -> dict[str, np.ndarray]:
    """GGUF tensor name -> importance vector, for every tensor of `path` that has one whose
    length is the tensor's row length (ne[0])."""
    from edgerun.sources.gguf_header import read_header

    dims = {name: info[0] for name, info in read_header(path).tensors.items()}
    entries = {}
    for module, name in gguf_names(list(values), path).items():
        vector = np.ascontiguousarray(values[module], dtype=np.float32)
        if dims[name] and dims[name][0] == vector.shape[0] and np.isfinite(vector).all():
            entries[name] = vector
    return entries


def ggml_type(name: str) -> int:
    """The ggml type id of a tensor type name (q8_0, Q6_K, ...); EdgerunError if unknown."""
    import gguf

    try:
        return int(gguf.GGMLQuantizationType[name.upper()])
    except KeyError:
        known = ", ".join(t.name.lower() for t in gguf.GGMLQuantizationType)
        raise EdgerunError(f"unknown GGUF tensor type '{name}'", f"one of {known}") from None


def exact(name: str) -> str:
    """A tensor-type override pattern that matches exactly one tensor name."""
    return f"^{re.escape(name)}$"


def apply(
    params: Any,
    imatrix: dict[str, np.ndarray] | None,
    overrides: dict[str, str] | None,
) -> list[Any]:
    """Point `params` (llama_model_quantize_params) at ctypes arrays holding the importance
    vectors and the tensor-type overrides (regex -> type name). Returns the objects that must
    stay alive until llama_model_quantize returns."""
    import llama_cpp

    keep: list[Any] = []
    if imatrix:
        items = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
        for item, (name, vector) in zip(items, imatrix.items(), strict=False):
            data = np.ascontiguousarray(vector, dtype=np.float32)
            keep += [name.encode(), data]
            item.name = keep[-2]
            item.data = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            item.size = data.size
        params.imatrix = items
        keep.append(items)
    if overrides:
        rules = (llama_cpp.llama_model_tensor_override * (len(overrides) + 1))()
        for rule, (pattern, type_name) in zip(rules, overrides.items(), strict=False):
            keep.append(pattern.encode())
            rule.pattern = keep[-1]
            rule.type = ggml_type(type_name)
        params.tt_overrides = rules
        keep.append(rules)
    return keep


def written_types(path: Path) -> dict[str, str]:
    """Tensor name -> ggml type name (lower case) as the GGUF header of `path` records it."""
    import gguf

    from edgerun.sources.gguf_header import read_header

    return {
        name: gguf.GGMLQuantizationType(info[1]).name.lower()
        for name, info in read_header(path).tensors.items()
    }
