"""Mixed-precision recipes for ONNX int4: which MatMul weights get 8 bits, which get 4.

A recipe is data: a name, a description and rules over the roles of a decoder's MatMuls (the
projections of each layer and the lm_head), resolved against one graph into a plan, node name ->
bits. Roles come from the node names both builders write (optimum: /model/layers.3/self_attn/
q_proj/MatMul; onnxruntime-genai: /model/layers.3/attn/qkv_proj/MatMul), so a recipe works on
either graph. The plan is applied by onnxruntime's MatMulNBitsQuantizer (quant) and recorded
in the manifest node by node.

The rules of the shipped recipes were chosen by measured per-layer sensitivity (see
edgerun.exporters.onnx.sensitivity and benchmarks/README.md, "Fidelity"), not by guess.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from edgerun.core.errors import EdgerunError

# node-name pattern -> role; the first match wins (qkv before q, gate_up before gate). Names of
# the llama / qwen / gemma style and of the GPT-NeoX, Falcon, Phi and StarCoder2 style; the same
# patterns read ONNX node names (/) and PyTorch module names (.).
ROLE_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"qkv_proj|query_key_value", "qkv"),
    (r"q_proj", "q"),
    (r"k_proj", "k"),
    (r"v_proj", "v"),
    (r"o_proj|(?:attn|attention)[/.](?:dense|c_proj)(?:[/.]|$)", "o"),
    (r"gate_up_proj", "gate_up"),
    (r"gate_proj", "gate"),
    (r"up_proj|dense_h_to_4h|mlp[/.](?:fc1|c_fc)(?:[/.]|$)", "up"),
    (r"down_proj|dense_4h_to_h|mlp[/.](?:fc2|c_proj)(?:[/.]|$)", "down"),
    (r"lm_head|embed_out", "lm_head"),
)
_ROLES = tuple((re.compile(pattern), role) for pattern, role in ROLE_PATTERNS)
_LAYER = re.compile(r"(?:^|[/.])(?:layers|h)\.(\d+)[/.]")


@dataclass(frozen=True)
class NodeRole:
    """Where one MatMul sits in the decoder: its layer (None for the lm_head) and role."""

    name: str
    layer: int | None
    role: str

    @property
    def key(self) -> str:
        """A short builder-neutral name, e.g. "L3.down" or "lm_head"."""
        return self.role if self.layer is None else f"L{self.layer}.{self.role}"


def node_role(name: str) -> NodeRole | None:
    """The role of a MatMul node from its name; None when it is not a decoder projection."""
    role = next((r for pattern, r in _ROLES if pattern.search(name)), None)
    if role is None:
        return None
    match = _LAYER.search(name)
    layer = int(match.group(1)) if match else None
    if layer is None and role != "lm_head":
        return None
    return NodeRole(name, layer, role)


@dataclass(frozen=True)
class Rule:
    """Give `bits` to the nodes whose role is in `roles` and whose layer is in `layers`.

    layers: None for every layer; otherwise indices, negative counting from the last layer."""

    bits: int
    roles: tuple[str, ...]
    layers: tuple[int, ...] | None = None

    def matches(self, node: NodeRole, n_layers: int) -> bool:
        if node.role not in self.roles:
            return False
        if node.layer is None or self.layers is None:
            return True
        return node.layer in {i % n_layers for i in self.layers}


@dataclass(frozen=True)
class Recipe:
    """A named mixed-precision recipe: `default_bits` everywhere, except where a rule says.

    budget: then spend this much more weight bytes (a fraction of the all-4-bit model's) on 8
    bits for the projections with the highest measured sensitivity per byte (calibrated at export,
    edgerun.exporters.onnx.target.budget_plan); None for a fixed recipe.
    block_size: the MatMulNBits block size when --block-size is not given (None: 32)."""

    name: str
    description: str
    rules: tuple[Rule, ...] = ()
    default_bits: int = 4
    budget: float | None = None
    block_size: int | None = None

    def plan(self, nodes: Iterable[str]) -> dict[str, int]:
        """node name -> bits for every decoder projection among `nodes` (others are left out)."""
        roles = [r for r in (node_role(n) for n in nodes) if r is not None]
        n_layers = 1 + max((r.layer for r in roles if r.layer is not None), default=0)
        plan = {}
        for node in roles:
            bits = next(
                (rule.bits for rule in self.rules if rule.matches(node, n_layers)),
                self.default_bits,
            )
            plan[node.name] = bits
        return plan


RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        Recipe("q4-pure", "every MatMul and the lm_head in 4 bits (the smallest, least faithful)"),
        Recipe(
            "q4-head8",
            "the lm_head (and a tied embedding) in 8 bits, every other MatMul in 4",
            rules=(Rule(8, ("lm_head",)),),
        ),
        # 19% (was 11%): with GPTQ (the default where its second moments fit) the off-grid
        # SmolLM2-135M reaches gguf-q4_k_m's KL below its 6.27 bits per weight (issue 23;
        # benchmarks/README.md, "Fidelity")
        Recipe(
            "q4-mixed",
            "4 bits, plus 8 bits for the most sensitive projections (measured at export on the"
            " calibration text) within 19% more bytes than q4-pure",
            budget=0.19,
        ),
        # off-grid SmolLM2-135M: mean KL 0.123 at 6.20 bits per weight, against q4-mixed's 0.139
        # at 5.84 and gguf-q4_k_m's 0.083 at 6.27 (benchmarks/README.md, "Fidelity")
        Recipe(
            "q4-head8-mixed",
            "block 64; the lm_head (and a tied embedding) in 8 bits, then 8 bits for the most"
            " sensitive projections within 14% more bytes than q4-pure",
            rules=(Rule(8, ("lm_head",)),),
            budget=0.14,
            block_size=64,
        ),
    )
}
DEFAULT_RECIPE = "q4-mixed"


def get_recipe(name: str) -> Recipe:
    """The recipe called `name`; EdgerunError listing the known ones otherwise."""
    try:
        return RECIPES[name]
    except KeyError:
        raise EdgerunError(
            f"unknown int4 recipe '{name}'", f"use one of {', '.join(RECIPES)}"
        ) from None


def plan_summary(plan: dict[str, int]) -> dict[str, int]:
    """bits -> number of nodes, for the export table and the manifest."""
    counts: dict[str, int] = {}
    for bits in plan.values():
        counts[str(bits)] = counts.get(str(bits), 0) + 1
    return dict(sorted(counts.items()))
