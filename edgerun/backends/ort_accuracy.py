"""MatMulNBits accuracy level as a load-time option of the ONNX Runtime backend.

The level is a node attribute baked into the graph at export: 1 computes in fp32 (activations
stay fp32, weights dequantized block by block), 4 quantizes the activations to int8 and runs
int8 dot products (VNNI on x86, SDOT / I8MM on ARM). Which is faster, and by how much the
outputs move, depends on the CPU, so `edgerun tune` searches it (fidelity-gated) and the runtime
applies the winner through the `accuracy_level` backend option.

Applying it must not copy or rewrite the artifact: the graph is read without its external data
(a few hundred KiB to a few MiB of protobuf), the attribute is set on every MatMulNBits node, and
the session is created from those bytes with onnxruntime's
``session.model_external_initializers_file_folder_path`` pointing at the artifact's directory, so
the weights are read from the artifact's own data file exactly as a load by path reads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgerun.core.errors import EdgerunError, first_line

#: MatMulNBits accuracy levels (onnxruntime contrib op): 0 unset (fp32), 1 fp32, 2 fp16, 3 bf16,
#: 4 int8.
LEVELS = (0, 1, 2, 3, 4)
#: The levels searched: fp32 and int8 compute. fp16 (2) and bf16 (3) compute are for ARM cores
#: with those kernels (not searched: no such machine here to measure them on).
SEARCHED = (1, 4)
FOLDER_KEY = "session.model_external_initializers_file_folder_path"
OP, DOMAIN = "MatMulNBits", "com.microsoft"


def check_level(value: object) -> int:
    """`value` as an accuracy level, or a one-line error."""
    if isinstance(value, bool) or not isinstance(value, int) or value not in LEVELS:
        raise EdgerunError(
            f"accuracy_level must be one of {', '.join(map(str, LEVELS))}, got {value!r}",
            "use 4 (int8 compute) or 1 (fp32 compute)",
        )
    return value


def graph_levels(model_file: Path) -> list[int]:
    """The accuracy levels of the graph's MatMulNBits nodes, sorted and unique ([] for none).
    Reads the graph only, never the external weights."""
    model = read_graph(model_file)
    found = {
        next((a.i for a in n.attribute if a.name == "accuracy_level"), 0)
        for n in model.graph.node
        if n.op_type == OP and n.domain == DOMAIN
    }
    return sorted(found)


def with_level(model_file: Path, level: int) -> bytes | None:
    """The graph of `model_file` with every MatMulNBits node at `level`, serialized, its
    initializers still pointing at the artifact's external data (load it with `FOLDER_KEY` set to
    the model's directory); None when the graph has no MatMulNBits node (an fp32 / fp16 graph:
    the level does not apply, and a tuned profile's option must not stop such a model)."""
    import onnx

    level = check_level(level)
    model = read_graph(model_file)
    nodes = [n for n in model.graph.node if n.op_type == OP and n.domain == DOMAIN]
    if not nodes:
        return None
    for node in nodes:
        kept = [a for a in node.attribute if a.name != "accuracy_level"]
        del node.attribute[:]
        node.attribute.extend([*kept, onnx.helper.make_attribute("accuracy_level", level)])
    return bytes(model.SerializeToString())


def read_graph(model_file: Path) -> Any:
    """The graph of `model_file` without its external weights, or a one-line error."""
    import onnx

    try:
        return onnx.load(str(model_file), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError, OSError
        first = first_line(exc)
        raise EdgerunError(
            f"cannot read the graph of {model_file}: {first}",
            "the file is corrupt, truncated or not ONNX: re-export it (edgerun verify checks hashes)",
        ) from exc
