"""Weight-only quantization of an exported ONNX decoder with onnxruntime.quantization.

MatMul weights become MatMulNBits (4 or 8 bit, block-wise) through ORT's MatMulNBitsQuantizer
(RTN "default" or HQQ). Two things the stock quantizer leaves in fp32 are handled here, because
they are a third of a small model: the lm_head, which optimum feeds through a Transpose of the
tied embedding (so the quantizer sees no constant weight), and the token-embedding Gather. The
lm_head weight is materialized so that it is quantized like every other MatMul; the embedding
Gather then becomes a GatherBlockQuantized that reads the lm_head's quantized tensors when the
embeddings are tied (one copy, as onnxruntime-genai's builder does with shared_embeddings), or
tensors quantized by the same ORT kernel when they are not. Both ways of tying are recognised:
optimum's (lm_head = Transpose(embedding)) and onnxruntime-genai's builder's (embedding =
Transpose(lm_head weight)).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgerun.core.errors import EdgerunError

LOGITS = "logits"


@dataclass(frozen=True)
class WeightOnlyConfig:
    """Parameters of one weight-only quantization (recorded in the manifest's `quant`)."""

    bits: int = 4
    block_size: int = 32
    symmetric: bool = True
    accuracy_level: int = 4
    algorithm: str = "rtn"

    def to_json(self) -> dict[str, Any]:
        return {
            "method": "MatMulNBits",
            "bits": self.bits,
            "block_size": self.block_size,
            "symmetric": self.symmetric,
            "accuracy_level": self.accuracy_level,
            "algorithm": self.algorithm,
        }


def prepare_graph(model: Any) -> tuple[Any | None, bool]:
    """Make the lm_head a MatMul of a constant weight (both ways of tying undone); return the
    embedding Gather (or None) and whether the embedding is tied to the lm_head."""
    tied = _untie_transposed_embedding(model)
    embed = _embedding_gather(model)
    tied = _materialize_lm_head(model) or tied
    return embed, tied


def matmul_nodes(model: Any) -> list[str]:
    """Names of the MatMul nodes with a constant 2-D weight (what the quantizer would take)."""
    inits = _initializers(model)
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "MatMul" and n.input[1] in inits and len(inits[n.input[1]].dims) == 2
    ]


def quantize_weight_only(
    model: Any,
    config: WeightOnlyConfig,
    plan: dict[str, int] | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Quantize an onnx.ModelProto in memory; return (quantized model, manifest `quant` dict).

    plan: node name -> bits (4 or 8) for a mixed-precision recipe (edgerun.exporters.
    onnx.recipes); nodes it does not name get `config.bits`. The embedding shares the lm_head's
    quantized copy (and bits) when tied. progress: called with `MatMul 12/74` as the quantizer
    takes each weight (every pass together). Raises EdgerunError when the graph has no lm_head
    MatMul.
    """
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    logging.getLogger(mnq.__name__).setLevel(logging.WARNING)
    embed, tied = prepare_graph(model)
    count = _Count(matmul_nodes(model), progress)
    head_name = _lm_head_node(model).name
    plan = dict(plan or {})
    # Nodes whose bits differ from config.bits go first, in their own pass per width (the
    # quantizer only takes MatMul nodes, so later passes skip them).
    for bits in sorted({b for b in plan.values() if b != config.bits}):
        nodes = [name for name, b in plan.items() if b == bits]
        wide = dataclasses.replace(config, bits=bits, algorithm="rtn")
        model = _run_quantizer(mnq, model, wide, _algo_config(mnq, wide), [], nodes, count)
    # HQQ's float zero points cannot feed GatherBlockQuantized: with tied embeddings the lm_head
    # is quantized by RTN in a second pass, so that one quantized copy serves both.
    head_rtn = (
        tied and config.algorithm == "hqq" and plan.get(head_name, config.bits) == config.bits
    )
    exclude = [head_name] if head_rtn else []
    model = _run_quantizer(mnq, model, config, _algo_config(mnq, config), exclude, None, count)
    if head_rtn:
        rtn = dataclasses.replace(config, algorithm="rtn")
        model = _run_quantizer(mnq, model, rtn, _algo_config(mnq, rtn), [], None, count)
    head_bits = _attr(_lm_head_node(model), "bits", config.bits)
    embed_config = dataclasses.replace(config, bits=head_bits) if tied else config
    embedding = _quantize_embedding(model, embed, tied, embed_config) if embed is not None else None
    _set_domain_opset(model, "com.microsoft", 1)
    done = [
        (_source_name(n.name), _attr(n, "bits", 4), _attr(n, "accuracy_level", 0))
        for n in model.graph.node
        if n.op_type == "MatMulNBits"
    ]
    quantized = _lm_head_node(model).op_type == "MatMulNBits"
    wide_head = plan.get(head_name, config.bits) != config.bits  # in a wider RTN pass
    head = ("rtn" if head_rtn or wide_head else config.algorithm) if quantized else "fp32"
    return model, quant_record(config, done, embedding, head)


def quant_record(
    config: WeightOnlyConfig,
    nodes: list[tuple[str, int, int]],
    embedding: dict[str, Any] | None,
    lm_head: str,
) -> dict[str, Any]:
    """The manifest's `quant`: the config, then what the graph says: nodes (MatMul name, bits,
    accuracy level; in graph order), the embedding note and how the lm_head was quantized."""
    quant = config.to_json()
    quant["nodes"] = {name: bits for name, bits, _ in nodes}
    # what the graph really says (HQQ leaves accuracy_level unset)
    levels = {level for _, _, level in nodes}
    quant["accuracy_level"] = levels.pop() if len(levels) == 1 else sorted(levels)
    quant["embedding"] = embedding
    quant["lm_head"] = lm_head
    return quant


def _run_quantizer(
    mnq: Any,
    model: Any,
    config: WeightOnlyConfig,
    algo: Any,
    exclude: list[str],
    include: list[str] | None = None,
    count: _Count | None = None,
) -> Any:
    """One quantizer pass; with `include`, only those nodes (every other MatMul is excluded);
    `count` sees each node the quantizer takes."""
    if include is not None:
        keep = set(include)
        exclude = [*exclude, *(n for n in matmul_nodes(model) if n not in keep)]
    quantizer = mnq.MatMulNBitsQuantizer(
        model,
        bits=config.bits,
        block_size=config.block_size,
        is_symmetric=config.symmetric,
        accuracy_level=config.accuracy_level,
        nodes_to_exclude=exclude,
        algo_config=algo,
    )
    if count is not None:
        count.watch(quantizer)
    quantizer.process()
    return quantizer.model.model


class _Count:
    """Counts the MatMul weights `names` as onnxruntime's quantizer takes them, across passes,
    and shows `MatMul 12/74` through `progress` (nothing without one)."""

    def __init__(self, names: list[str], progress: Callable[[str], None] | None) -> None:
        self.names, self.done, self.progress = set(names), 0, progress

    def watch(self, quantizer: Any) -> None:
        """Wrap the quantizer's per-node call (no counts where its internals differ)."""
        inner = getattr(getattr(quantizer, "node_quantizer", None), "quantize", None)
        if self.progress is None or inner is None:
            return

        def quantize(node: Any, graph_stack: Any) -> Any:
            if node.name in self.names and self.progress is not None:
                self.done += 1
                self.progress(f"MatMul {self.done}/{len(self.names)}")
            return inner(node, graph_stack)

        quantizer.node_quantizer.quantize = quantize


def _algo_config(mnq: Any, config: WeightOnlyConfig) -> Any:
    if config.algorithm == "hqq":
        return mnq.HQQWeightOnlyQuantConfig(block_size=config.block_size, bits=config.bits)
    if config.algorithm == "rtn":
        return mnq.DefaultWeightOnlyQuantConfig(
            block_size=config.block_size,
            is_symmetric=config.symmetric,
            accuracy_level=config.accuracy_level,
            bits=config.bits,
        )
    raise EdgerunError(f"unknown quantization algorithm '{config.algorithm}'", "use rtn or hqq")


def _source_name(name: str) -> str:
    """The MatMul node's name before the quantizer appended its _Q4 / _Q8 suffix."""
    return re.sub(r"_Q\d+$", "", name)


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def _initializers(model: Any) -> dict[str, Any]:
    return {t.name: t for t in model.graph.initializer}


def _producer(model: Any, name: str) -> Any | None:
    """The node that writes tensor `name` (None for initializers and graph inputs)."""
    return next((n for n in model.graph.node if name in n.output), None)


# Element-wise ops some families apply after the lm_head: phi's bias (Add), granite's logits
# scaling (Div / Mul), gemma2's soft-capping (Div, Tanh, Mul), casts.
_AFTER_HEAD = {"Add", "Sub", "Mul", "Div", "Tanh", "Cast", "Identity"}


def _lm_head_node(model: Any) -> Any:
    """The lm_head MatMul (or its quantized replacement): the MatMul that writes the logits, or
    that feeds them through a chain of element-wise ops with constant other operands."""
    producers = {out: n for n in model.graph.node for out in n.output}
    constants = _initializers(model).keys() | {
        out for n in model.graph.node if n.op_type == "Constant" for out in n.output
    }
    name = LOGITS
    for _ in range(8):
        node = producers.get(name)
        if node is None:
            break
        if node.op_type in ("MatMul", "MatMulNBits"):
            return node
        varying = [i for i in node.input if i and i not in constants]
        if node.op_type not in _AFTER_HEAD or len(varying) != 1:
            break
        name = varying[0]
    raise EdgerunError(
        "the exported graph has no lm_head MatMul producing 'logits'",
        "export a causal LM with task text-generation-with-past",
    )


def _embedding_gather(model: Any) -> Any | None:
    """The token-embedding Gather: a Gather of a 2-D initializer by `input_ids`."""
    inits = _initializers(model)
    for node in model.graph.node:
        if node.op_type == "Gather" and node.input[1] == "input_ids" and node.input[0] in inits:
            return node
    return None


def _untie_transposed_embedding(model: Any) -> bool:
    """onnxruntime-genai's builder ties the embedding to the lm_head as Gather(Transpose(W)), W
    the lm_head MatMul's [hidden, vocab] weight. Give the Gather its own [vocab, hidden] table, so
    that the lm_head is quantized as usual and the embedding then shares its quantized copy.
    Returns True when the graph was tied that way."""
    from onnx import numpy_helper

    head = _lm_head_node(model)
    inits = _initializers(model)
    for node in model.graph.node:
        if node.op_type != "Gather" or node.input[1] != "input_ids":
            continue
        producer = _producer(model, node.input[0])
        if (
            producer is None
            or producer.op_type != "Transpose"
            or producer.input[0] != head.input[1]
        ):
            continue
        weight = inits.get(head.input[1])
        if weight is None:
            return False
        table = numpy_helper.to_array(weight).T
        name = f"{head.input[1]}_embedding"
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(table), name))
        node.input[0] = name
        if not any(producer.output[0] in n.input for n in model.graph.node):
            model.graph.node.remove(producer)
        return True
    return False


def _materialize_lm_head(model: Any) -> bool:
    """Replace a Transpose(initializer) feeding the lm_head by a transposed initializer, so the
    quantizer sees a constant weight. Returns True if that initializer is the embedding (tied)."""
    from onnx import numpy_helper

    head = _lm_head_node(model)
    producer = _producer(model, head.input[1])
    inits = _initializers(model)
    if producer is None or producer.op_type != "Transpose" or producer.input[0] not in inits:
        return False
    source = numpy_helper.to_array(inits[producer.input[0]])
    weight = numpy_helper.from_array(np.ascontiguousarray(source.T), "lm_head.weight_t")
    model.graph.initializer.append(weight)
    head.input[1] = weight.name
    if not any(producer.output[0] in n.input for n in model.graph.node if n is not head):
        model.graph.node.remove(producer)
    embed = _embedding_gather(model)
    return embed is not None and embed.input[0] == producer.input[0]


def _quantize_embedding(
    model: Any, gather: Any, tied: bool, config: WeightOnlyConfig
) -> dict[str, Any] | None:
    """Turn the embedding Gather into GatherBlockQuantized; returns the manifest note."""
    from onnx import helper, numpy_helper

    inits = _initializers(model)
    table = numpy_helper.to_array(inits[gather.input[0]])
    vocab, hidden = table.shape
    block = _embedding_block(hidden, config.block_size)
    shared = tied and block == config.block_size and _shareable(model, vocab, hidden, config)
    if shared:
        head = _lm_head_node(model)
        packed, scales = head.input[1], head.input[2]
        zero = head.input[3] if len(head.input) > 3 and head.input[3] else None
    else:
        packed, scales, zero = _quantize_table(model, gather.input[0], table, block, config)
    flat = f"{packed}_rows"
    shape = numpy_helper.from_array(np.array([vocab, hidden * config.bits // 8]), f"{flat}_shape")
    model.graph.initializer.append(shape)
    reshape = helper.make_node("Reshape", [packed, shape.name], [flat], name=f"{flat}_reshape")
    inputs = [flat, gather.input[1], scales] + ([zero] if zero else [])
    node = helper.make_node(
        "GatherBlockQuantized",
        inputs,
        list(gather.output),
        name="/model/embed_tokens/GatherBlockQuantized",
        domain="com.microsoft",
        bits=config.bits,
        block_size=block,
        gather_axis=0,
        quantize_axis=1,
    )
    nodes = list(model.graph.node)
    index = nodes.index(gather)
    del model.graph.node[:]
    model.graph.node.extend(nodes[:index] + [reshape, node] + nodes[index + 1 :])
    _drop_unused_initializer(model, gather.input[0])
    return {"block_size": block, "shared_with_lm_head": shared}


def _embedding_block(hidden: int, block: int) -> int:
    """The embedding's block size: the requested one when it divides the hidden size, else the
    largest power of two >= 16 that does (GatherBlockQuantized rows cannot be padded)."""
    while block > 16 and hidden % block:
        block //= 2
    if hidden % block:
        raise EdgerunError(
            f"hidden size {hidden} is not a multiple of 16: the embedding cannot be block-quantized",
            "export onnx-fp16 or onnx-fp32 for this model",
        )
    return block


def _shareable(model: Any, vocab: int, hidden: int, config: WeightOnlyConfig) -> bool:
    """True when the quantized lm_head holds uint8 blocks in the layout GatherBlockQuantized reads
    (RTN "default"; HQQ's float zero points are not)."""
    head = _lm_head_node(model)
    if head.op_type != "MatMulNBits":
        return False
    inits = _initializers(model)
    weight = inits.get(head.input[1])
    zero = inits.get(head.input[3]) if len(head.input) > 3 and head.input[3] else None
    uint8 = 2  # onnx.TensorProto.UINT8
    return (
        weight is not None
        and weight.data_type == uint8
        and list(weight.dims)[0] == vocab
        and (zero is None or zero.data_type == uint8)
    )


def _quantize_table(
    model: Any, name: str, table: np.ndarray, block: int, config: WeightOnlyConfig
) -> tuple[str, str, str | None]:
    """Block-quantize an embedding table [vocab, hidden] with ORT's own MatMulNBits kernel (the
    table's rows are the columns of a [hidden, vocab] MatMul weight); add the initializers."""
    from onnx import numpy_helper
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    quantizer = mnq.DefaultWeightOnlyQuantizer(
        mnq.DefaultWeightOnlyQuantConfig(
            block_size=block, is_symmetric=config.symmetric, bits=config.bits
        )
    )
    packed, scales, zero = quantizer.qbits_block_quant(np.ascontiguousarray(table.T))
    names = (f"{name}_Q{config.bits}", f"{name}_scales", f"{name}_zero_points")
    arrays = [packed, scales] + ([] if config.symmetric else [zero])
    for array, tensor_name in zip(arrays, names, strict=False):
        model.graph.initializer.append(numpy_helper.from_array(array, tensor_name))
    return names[0], names[1], None if config.symmetric else names[2]


def _drop_unused_initializer(model: Any, name: str) -> None:
    if any(name in n.input for n in model.graph.node):
        return
    for tensor in list(model.graph.initializer):
        if tensor.name == name:
            model.graph.initializer.remove(tensor)


def _set_domain_opset(model: Any, domain: str, version: int) -> None:
    if not any(o.domain == domain for o in model.opset_import):
        from onnx import helper

        model.opset_import.append(helper.make_opsetid(domain, version))
