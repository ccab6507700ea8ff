"""How fast this CPU runs an artifact's MatMulNBits kernels at each accuracy level, without the
model: one decode step's matrix products, timed node kind by node kind.

`edgerun tune` searches the accuracy level (edgerun.backends.ort_accuracy), but a model trial
costs a fidelity check (two loads) and a load of its own. Where the int8 kernels exist, fp32
compute (level 1) was far slower in every study (29.5 against 144 tok/s idle, 10.9 against
62.9 loaded, SmolLM2-135M onnx-int4 on an AMD EPYC), and the level changes only these nodes:
so the products alone say whether a level can compete. Kernels differ per ISA, which is why this
is measured here and not assumed.

How: the graph is read without its weights; its MatMulNBits nodes are grouped by kind (K, N,
bits, block size, zero points). For each kind a one-node graph with random weights of that
shape (N capped at ``N_CAP`` columns: at one row a product's time grows with N, so the capped
time is scaled back up) runs ``CALLS`` one-row products per level, interleaved, on one thread.
A level's step time is the sum over kinds of the node count times the kind's median time.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from edgerun.backends.ort_accuracy import DOMAIN, OP, check_level, read_graph
from edgerun.core.errors import EdgerunError, first_line

N_CAP = 4096
CALLS = 15
#: A level is slower beyond doubt when its step takes this many times the default level's: the
#: products are most of a decode step, and the rest does not change with the level.
SLOWER = 1.5

Kind = tuple[int, int, int, int, bool]  # K, N, bits, block_size, zero points


def kinds(model_file: Path) -> Counter[Kind]:
    """MatMulNBits node kinds of the graph and how many nodes of each (empty: none)."""
    found: Counter[Kind] = Counter()
    for node in read_graph(model_file).graph.node:
        if node.op_type != OP or node.domain != DOMAIN:
            continue
        attrs = {a.name: a.i for a in node.attribute}
        try:
            kind = (attrs["K"], attrs["N"], attrs["bits"], attrs["block_size"], len(node.input) > 3)
        except KeyError as exc:
            raise EdgerunError(f"a MatMulNBits node of {model_file.name} lacks {exc}") from None
        found[kind] += 1
    return found


def _node_model(kind: Kind, level: int) -> bytes:
    """A one-node graph: Y[1, N'] = MatMulNBits(A[1, K], random weights of `kind`), N' capped."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    k, n, bits, block, zero_points = kind
    n = min(n, N_CAP)
    blocks = (k + block - 1) // block
    rng = np.random.default_rng(0)
    weights = rng.integers(0, 256, size=(n, blocks, block * bits // 8), dtype=np.uint8)
    scales = (rng.random((n, blocks), dtype=np.float32) + 0.5) / 64
    inits = [onnx.numpy_helper.from_array(weights, "B"), onnx.numpy_helper.from_array(scales, "S")]
    inputs = ["A", "B", "S"]
    if zero_points:
        packed = (blocks * bits + 7) // 8
        zeros = np.full((n, packed), 0x88 if bits == 4 else 128, dtype=np.uint8)
        inits.append(onnx.numpy_helper.from_array(zeros, "Z"))
        inputs.append("Z")
    node = helper.make_node(
        OP, inputs, ["Y"], domain=DOMAIN,
        K=k, N=n, bits=bits, block_size=block, accuracy_level=level,
    )  # fmt: skip
    graph = helper.make_graph(
        [node], "probe",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, n])],
        inits,
    )  # fmt: skip
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)]
    )
    return bytes(model.SerializeToString())


def _session(kind: Kind, level: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(_node_model(kind, level), opts, providers=["CPUExecutionProvider"])


def step_seconds(model_file: Path, levels: list[int]) -> dict[int, float]:
    """Level -> seconds of one decode step's MatMulNBits products on one thread ({} when the
    graph has none). Raises EdgerunError when onnxruntime cannot run a kind."""
    import numpy as np

    found = kinds(model_file)
    totals = {check_level(level): 0.0 for level in levels}
    for kind, count in found.items():
        try:
            sessions = {level: _session(kind, level) for level in totals}
            feed = {"A": np.random.default_rng(1).standard_normal((1, kind[0]), np.float32)}
            for session in sessions.values():
                session.run(None, feed)  # warm-up: prepacking, allocations
            times: dict[int, list[float]] = {level: [] for level in totals}
            for _ in range(CALLS):  # interleaved: a burst of load hits every level alike
                for level, session in sessions.items():
                    started = time.perf_counter()
                    session.run(None, feed)
                    times[level].append(time.perf_counter() - started)
        except EdgerunError:
            raise
        except Exception as exc:  # onnxruntime's own exception types
            raise EdgerunError(
                f"cannot time MatMulNBits {kind[:4]} of {model_file.name}: {first_line(exc)}"
            ) from exc
        scale = kind[1] / min(kind[1], N_CAP)
        for level, seconds in times.items():
            totals[level] += count * scale * float(np.median(seconds))
    return totals if found else {}


def slower_levels(model_file: Path, default: int, others: list[int]) -> dict[int, str]:
    """Levels of `others` whose products take more than SLOWER times the `default` level's
    here, each with what was measured ({} when none, or when the graph has no MatMulNBits)."""
    measured = step_seconds(model_file, [default, *others])
    if not measured or measured[default] <= 0:
        return {}
    base = measured[default]
    return {
        level: (
            f"its MatMulNBits products took {measured[level] / base:.1f}x level {default}'s here "
            f"({measured[level] * 1e3:.2f} against {base * 1e3:.2f} ms a step, one thread)"
        )
        for level in others
        if measured[level] > SLOWER * base
    }
