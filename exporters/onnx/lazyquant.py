"""Weight-only quantization of onnxruntime-genai's builder graph (an onnx_ir model) before it is
written, one tensor at a time.

The graph that edgerun.exporters.onnx.quant makes from the fp32 file, made without the fp32
file: each MatMul weight becomes MatMulNBits tensors (`<weight>_Q<bits>`, `_scales`,
`_zero_points`, node `<node>_Q<bits>`, the names and attributes onnxruntime's MatMulNBitsQuantizer
writes), quantized by the same kernel (DefaultWeightOnlyQuantizer.qbits_block_quant), RTN only,
or, given the export's importance statistics, by importance-weighted rounding of the same layout
(edgerun.exporters.onnx.weighted), but lazily: a weight is cast to fp32 and quantized when the
writer reaches its tensors and dropped once they are written, so memory holds one weight, never
the model. The embedding Gather becomes
a GatherBlockQuantized that reads the lm_head's blocks when tied (the builder ties them as
Gather(Transpose(lm_head weight))), or its own blocks, as quant does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from edgerun.core.errors import EdgerunError
from edgerun.exporters.onnx.quant import (
    _AFTER_HEAD,
    LOGITS,
    WeightOnlyConfig,
    _embedding_block,
    quant_record,
)

if TYPE_CHECKING:  # pragma: no cover
    from edgerun.exporters.importance import Grams, Importance
    from edgerun.exporters.onnx.rounding import Tally

# (a MatMul input's importance [K], the tally, a reader of its second moments [K, K] or None)
Weighting = tuple[np.ndarray, "Tally", Callable[[], "np.ndarray | None"]]


class _Blocks:
    """The MatMulNBits tensors of one weight [K, N]: quantized when the first of them is written,
    dropped (with the source) when the last one is. With an importance vector [K] and a Tally
    the blocks are rounded by edgerun.exporters.onnx.weighted (same layout), else by RTN."""

    def __init__(
        self,
        source: Any,
        bits: int,
        block: int,
        symmetric: bool,
        transpose: bool,
        weighting: Weighting | None = None,
    ):
        self.source, self.bits, self.block, self.symmetric = source, bits, block, symmetric
        self.transpose = transpose  # the source is the [N, K] table (an untied embedding)
        self.weighting = weighting
        self.parts: tuple[np.ndarray, ...] | None = None
        self.left = 2 if symmetric else 3

    def part(self, index: int, name: str) -> Any:
        import onnx_ir as ir
        from onnxruntime.quantization import matmul_nbits_quantizer as mnq

        if self.parts is None:
            weight = np.asarray(self.source.numpy(), dtype=np.float32)
            weight = np.ascontiguousarray(weight.T if self.transpose else weight)
            if self.weighting is not None:
                imp, tally, gram = self.weighting
                new = tally.quantize(weight, imp, self.bits, self.block, self.symmetric, gram())
                self.parts = (new.packed, new.scales, new.zero_points)
            else:
                config = mnq.DefaultWeightOnlyQuantConfig(
                    block_size=self.block, is_symmetric=self.symmetric, bits=self.bits
                )
                self.parts = mnq.DefaultWeightOnlyQuantizer(config).qbits_block_quant(weight)
            self.source = self.weighting = None
        tensor = ir.tensor(self.parts[index], name=name)
        self.left -= 1
        if not self.left:
            self.parts = None
        return tensor

    def values(self, graph: Any, prefix: str, k: int, n: int) -> list[Any]:
        """Register `<prefix>_Q<bits>`, `_scales` (and `_zero_points`) as lazy initializers."""
        import onnx_ir as ir

        k_blocks = (k + self.block - 1) // self.block
        kpack = 8 // self.bits
        shapes = [
            (f"{prefix}_Q{self.bits}", ir.DataType.UINT8, [n, k_blocks, self.block // kpack]),
            (f"{prefix}_scales", ir.DataType.FLOAT, [n, k_blocks]),
            (f"{prefix}_zero_points", ir.DataType.UINT8, [n, (k_blocks + kpack - 1) // kpack]),
        ]
        values = []
        for index, (name, dtype, shape) in enumerate(shapes[: 2 if self.symmetric else 3]):
            lazy = ir.LazyTensor(
                lambda i=index, nm=name: self.part(i, nm), dtype=dtype, shape=ir.Shape(shape)
            )
            value = ir.Value(name=name, type=ir.TensorType(dtype), shape=ir.Shape(shape))
            value.const_value = lazy
            graph.register_initializer(value)
            values.append(value)
        return values


def quantize_lazily(
    model: Any,
    config: WeightOnlyConfig,
    plan: dict[str, int] | None = None,
    importance: Importance | None = None,
    tally: Tally | None = None,
    grams: Grams | None = None,
) -> dict[str, Any]:
    """Rewrite the builder's graph in place: MatMul -> MatMulNBits (bits from `plan`, node name ->
    bits, else `config.bits`), the embedding Gather -> GatherBlockQuantized. Returns the manifest's
    `quant`, as quant.quantize_weight_only does. RTN only (the caller falls back otherwise);
    with `importance` and `tally` each MatMul whose input statistics it holds is rounded with
    them (rounding.Tally, counted there as the writer reaches it), the others by RTN; with
    `grams` (the inputs' second moments) by GPTQ, each matrix read when its weight is."""

    if config.algorithm != "rtn":
        raise EdgerunError(f"the streamed export quantizes with RTN, not {config.algorithm}", "")
    graph = model.graph
    head = _lm_head(graph)
    gather, table, tied = _embedding(graph, head)
    plan = plan or {}
    done: list[tuple[str, int, int]] = []
    for node in [n for n in graph if n.op_type == "MatMul" and _weight(n) is not None]:
        bits = plan.get(node.name, config.bits)
        _to_nbits(graph, node, bits, config, _weighting(node, importance, tally, grams))
        done.append((node.name, bits, config.accuracy_level))
    model.opset_imports.setdefault("com.microsoft", 1)
    embedding = None
    if gather is not None:
        head = _lm_head(graph)
        bits = _attr(head, "bits", config.bits) if tied else config.bits
        embedding = _to_gather_quantized(graph, gather, table, head, tied, bits, config)
    for name in [n for n, v in graph.initializers.items() if not v.uses()]:
        graph.initializers.pop(name)
    quantized = _lm_head(graph).op_type == "MatMulNBits"
    return quant_record(config, done, embedding, "rtn" if quantized else "fp32")


def _weighting(
    node: Any, importance: Importance | None, tally: Tally | None, grams: Grams | None
) -> Weighting | None:
    """(the input statistics of a MatMul node, the tally, its second moments' reader), None
    when there are none for it."""
    if importance is None or tally is None:
        return None
    imp = importance.for_node(node.name)
    k = int(node.inputs[1].const_value.shape[0])
    if imp is None or imp.shape[0] != k:
        tally.nodes_rtn += 1
        return None

    def gram() -> np.ndarray | None:
        found = None if grams is None else grams.for_node(node.name)
        return found if found is not None and found.shape == (k, k) else None

    return imp, tally, gram


def _weight(node: Any) -> Any | None:
    value = node.inputs[1]
    if value is None or value.const_value is None or len(value.const_value.shape) != 2:
        return None
    return value


def _attr(node: Any, name: str, default: Any) -> Any:
    attr = node.attributes.get(name)
    return default if attr is None else attr.value


def _lm_head(graph: Any) -> Any:
    """The MatMul(NBits) that writes the logits, through element-wise ops with constant operands
    (quant._lm_head_node on the builder's graph)."""
    value = next((v for v in graph.outputs if v.name == LOGITS), None)
    for _ in range(8):
        node = value.producer() if value is not None else None
        if node is None:
            break
        if node.op_type in ("MatMul", "MatMulNBits"):
            return node
        varying = [v for v in node.inputs if v is not None and not _constant(v)]
        if node.op_type not in _AFTER_HEAD or len(varying) != 1:
            break
        value = varying[0]
    raise EdgerunError(
        "the built graph has no lm_head MatMul producing 'logits'", "use --builder optimum"
    )


def _constant(value: Any) -> bool:
    producer = value.producer()
    return value.const_value is not None or (
        producer is not None and producer.op_type == "Constant"
    )


def _embedding(graph: Any, head: Any) -> tuple[Any | None, Any | None, bool]:
    """(the embedding Gather, its [vocab, hidden] table value or None when tied, tied)."""
    for node in graph:
        ids = node.inputs[1] if node.op_type == "Gather" and len(node.inputs) > 1 else None
        if ids is None or ids.name != "input_ids":
            continue
        table = node.inputs[0]
        producer = table.producer()
        if producer is not None and producer.op_type == "Transpose":
            if producer.inputs[0] is head.inputs[1]:
                return node, None, True
            return None, None, False
        return (node, table, False) if table.const_value is not None else (None, None, False)
    return None, None, False


def _to_nbits(
    graph: Any,
    node: Any,
    bits: int,
    config: WeightOnlyConfig,
    weighting: Weighting | None = None,
) -> None:
    """Replace a MatMul of a constant [K, N] weight by MatMulNBits over lazily quantized blocks
    (importance-weighted when `weighting` is given)."""
    import onnx_ir as ir

    weight = node.inputs[1]
    k, n = (int(d) for d in weight.const_value.shape)
    blocks = _Blocks(
        weight.const_value, bits, config.block_size, config.symmetric, False, weighting
    )
    values = blocks.values(graph, weight.name, k, n)
    attrs: dict[str, Any] = {"K": k, "N": n, "bits": bits, "block_size": config.block_size}
    if config.accuracy_level:
        attrs["accuracy_level"] = config.accuracy_level
    new = ir.node(
        "MatMulNBits",
        [node.inputs[0], *values],
        attributes=attrs,
        domain="com.microsoft",
        name=f"{node.name}_Q{bits}",
    )
    ir.convenience.replace_nodes_and_values(graph, node, [node], [new], node.outputs, new.outputs)


def _to_gather_quantized(
    graph: Any, gather: Any, table: Any, head: Any, tied: bool, bits: int, config: WeightOnlyConfig
) -> dict[str, Any]:
    """Replace the embedding Gather by Reshape + GatherBlockQuantized (quant._quantize_embedding)."""
    import onnx_ir as ir

    if tied:
        source = gather.inputs[0].producer()
        vocab, hidden = int(head.attributes["N"].value), int(head.attributes["K"].value)
    else:
        vocab, hidden = (int(d) for d in table.const_value.shape)
    block = _embedding_block(hidden, config.block_size)
    shared = tied and block == config.block_size and head.op_type == "MatMulNBits"
    if shared:
        quantized = [v for v in head.inputs[1:4] if v is not None]
    elif tied:  # quant unties the table into `<lm_head weight>_embedding` and names after it
        weight = source.inputs[0]
        blocks = _Blocks(weight.const_value, bits, block, config.symmetric, transpose=False)
        quantized = blocks.values(graph, f"{weight.name}_embedding", hidden, vocab)
    else:
        blocks = _Blocks(table.const_value, bits, block, config.symmetric, transpose=True)
        quantized = blocks.values(graph, table.name, hidden, vocab)
    flat = f"{quantized[0].name}_rows"
    shape = ir.Value(
        name=f"{flat}_shape", const_value=ir.tensor(np.array([vocab, hidden * bits // 8]))
    )
    graph.register_initializer(shape)
    reshape = ir.node("Reshape", [quantized[0], shape], name=f"{flat}_reshape")
    reshape.outputs[0].name = flat
    node = ir.node(
        "GatherBlockQuantized",
        [reshape.outputs[0], gather.inputs[1], *quantized[1:]],
        attributes={"bits": bits, "block_size": block, "gather_axis": 0, "quantize_axis": 1},
        domain="com.microsoft",
        name="/model/embed_tokens/GatherBlockQuantized",
    )
    old = [gather]
    if tied and len(source.outputs[0].uses()) == 1:
        old.insert(0, source)
    graph.insert_before(gather, reshape)
    ir.convenience.replace_nodes_and_values(
        graph, gather, old, [node], gather.outputs, node.outputs
    )
    return {"block_size": block, "shared_with_lm_head": shared}
