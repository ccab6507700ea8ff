"""`--target-kl` / `--target-ppl-ratio`: the smallest mixed int4/int8 plan that meets a quality target.

1. Calibrate: the PyTorch reference runs the calibration text (exporters/data/calib.txt or
   --calib-text; never the evaluation text) (edgerun.exporters.onnx.sensitivity), the whole
   fp32 model loaded for this stage only. (A budget recipe such as the default q4-mixed only
   ranks, with the same Fisher estimate computed layer by layer where the checkpoint streams:
   edgerun.exporters.onnx.fisher_stream; see memory.calibration_plan.)
   Sensitivity is the second-order (Fisher) estimate of the KL each group's exact 4-bit error
   costs: one backward pass per calibration window, not one forward per group (on SmolLM2-135M
   its ranking was checked against per-group measured KLs, benchmarks/README.md "Fidelity").
2. Search: groups ranked by sensitivity per extra byte; bisect on how many go to 8 bits for the
   smallest plan whose measured calibration metric is within `MARGIN` of the target.
3. Hold out: the export pipeline then validates the real artifact on the evaluation text with the
   target as its gate, so what the manifest reports as passed met the target on text the search
   never saw.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from edgerun.core.errors import EdgerunError
from edgerun.exporters.formats import ExportContext
from edgerun.exporters.onnx import sensitivity as sens
from edgerun.exporters.onnx.recipes import Recipe

# Aim below the target on the calibration text: held-out text scores differently. On SmolLM2-135M
# the held-out KL of a plan was 0.83-1.12x its calibration KL (benchmarks/README.md, "Fidelity").
MARGIN = 0.8
WINDOW = 256
SEARCH_WINDOWS = 4  # 1,024 tokens per real KL measurement of a plan
FISHER_WINDOW = 128
FISHER_WINDOWS = 8  # 8 backward passes of 128 tokens for the sensitivity estimate
FISHER = "Fisher-weighted 4-bit error, 0.5 * sum(F * dW^2)"


def calibration_ids(ctx: ExportContext) -> np.ndarray:
    """Token ids of the calibration text (the shipped one unless --calib-text), at least the
    search's WINDOW * SEARCH_WINDOWS of them."""
    from edgerun.exporters.importance import calibration_ids as read_ids

    return read_ids(ctx, WINDOW * SEARCH_WINDOWS)[0]


def ranked_groups(model: Any, nodes: list[str], config: Any, ids: np.ndarray) -> list[sens.Group]:
    """The graph's projection groups with their Fisher sensitivity (a backward pass over the
    whole `model` per window), most worth 8 bits first."""
    groups = _check_groups(sens.torch_groups(model, nodes))
    sens.fisher_sensitivity(model, _short(ids), groups, config.block_size, config.symmetric)
    return sens.rank(groups)


def _short(ids: np.ndarray) -> list[np.ndarray]:
    step = FISHER_WINDOW
    return [ids[i : i + step] for i in range(0, len(ids) - step + 1, step)][:FISHER_WINDOWS]


def _check_groups(groups: list[sens.Group]) -> list[sens.Group]:
    if not groups:
        raise EdgerunError(
            "no decoder projection of the graph matches a layer of the reference model",
            "use --recipe q4-pure or q4-head8 for this architecture",
        )
    return groups


def budget_plan(
    ctx: ExportContext,
    nodes: list[str],
    config: Any,
    recipe: Recipe,
    detail: Callable[[str], None] | None = None,
) -> tuple[dict[str, int], dict[str, Any]]:
    """A budget recipe's plan: its rules, then 8 bits for the most sensitive groups (per byte)
    while their extra bytes fit `recipe.budget` x the all-4-bit weight bytes.

    Sensitivity (memory.calibration_plan): Fisher, layer by layer from the safetensors
    (edgerun.exporters.onnx.fisher_stream) or on the whole fp32 model; past the call's memory
    limit, an importance matrix gathered layer by layer (less faithful: on SmolLM2-135M its plan
    scored mean KL 0.237 against Fisher's 0.162, benchmarks/README.md "Scale"). `detail(str)`
    shows per-layer progress."""
    tokens = FISHER_WINDOW * FISHER_WINDOWS
    how = (ctx.memory_estimate or {}).get("calibration")
    if how == "imatrix":
        from edgerun.exporters import importance
        from edgerun.exporters.onnx.importance import SENSITIVITY, imatrix_sensitivity

        windows, sha = importance.calibration(ctx)
        groups, values, tokens = imatrix_sensitivity(
            ctx.reference.path, nodes, windows, config.block_size, config.symmetric, detail
        )
        importance.store(ctx, values, tokens, sha)  # the export's statistics: measured once
        ranked, method = sens.rank(_check_groups(groups)), SENSITIVITY
    elif how == "fisher-layers":
        from edgerun.exporters.onnx.fisher_stream import streamed_fisher

        windows = _short(calibration_ids(ctx))
        groups = streamed_fisher(
            ctx.reference.path, nodes, windows, config.block_size, config.symmetric, detail
        )
        ranked, method = sens.rank(_check_groups(groups)), FISHER + ", layer by layer"
    else:
        with ctx.reference.whole() as model:
            ranked, method = ranked_groups(model, nodes, config, calibration_ids(ctx)), FISHER
    plan = recipe.plan(nodes)
    budget, chosen, spent = raise_within(ranked, plan, config, recipe.budget or 0.0)
    record = {
        "name": recipe.name,
        "description": recipe.description,
        "budget": recipe.budget,
        "calibration": {
            "sensitivity": method,
            "sensitivity_tokens": tokens,
            "extra_bytes": int(spent),
            "budget_bytes": int(budget),
        },
        "raised": chosen,
        "sensitivity": {g.role.key: round(g.sensitivity or 0.0, 6) for g in ranked},
    }
    return plan, record


def raise_within(
    ranked: list[sens.Group], plan: dict[str, int], config: Any, share: float
) -> tuple[float, list[str], float]:
    """Raise the `ranked` groups to 8 bits in `plan` (in place), in order, while their extra bytes
    fit `share` x the all-4-bit weight bytes. Returns (budget bytes, raised keys, bytes spent)."""
    per_weight = (config.bits + 32 / config.block_size) / 8  # bytes: codes + an fp32 scale
    budget = share * per_weight * sum(g.params for g in ranked)
    chosen, spent = [], 0.0
    for group in ranked:
        if plan.get(group.role.name) == 8:
            continue
        if spent + group.extra_bytes <= budget:
            plan[group.role.name] = 8
            spent += group.extra_bytes
            chosen.append(group.role.key)
    return budget, chosen, spent


class WriterRounding:
    """The search's probes rounded with the export's importance statistics, by the importance-
    weighted scale search the writer uses (a node without statistics by onnxruntime's RTN, as
    the writer leaves it). Probes that measured RTN's error overstated the artifact's KL and
    bought 8-bit layers it did not need (SmolLM2-135M off grid, --target-kl 0.05: 7.99 bits per
    weight, held-out KL 0.030 with GPTQ). Where the writer rounds by GPTQ the probes still use
    the weighted search: GPTQ is fitted to the calibration text the probes are scored on, and
    probes rounded by GPTQ chose 6.79 bits per weight at calibration KL 0.036 whose held-out
    KL was 0.065, over the target (benchmarks/README.md, "Fidelity"). Each module's blocks are
    computed once per bit width and kept packed."""

    def __init__(self, ranked: list[sens.Group], importance: Any, config: Any) -> None:
        self.node = {id(m): g.role.name for g in ranked for m in g.modules}
        self.importance, self.config = importance, config
        self._blocks: dict[tuple[int, int], Any] = {}
        self.counts = {"importance-weighted": 0, "rtn": 0}

    def __call__(self, module_id: int, weight_kn: np.ndarray, bits: int) -> np.ndarray:
        from edgerun.exporters.onnx import weighted

        block, symmetric = self.config.block_size, self.config.symmetric
        k = weight_kn.shape[0]
        key = (module_id, bits)
        if key not in self._blocks:
            imp = self.importance.for_node(self.node[module_id])
            if imp is None or imp.shape[0] != k:
                self.counts["rtn"] += 1
                self._blocks[key] = None
            else:
                self.counts["importance-weighted"] += 1
                self._blocks[key] = weighted.quantize(weight_kn, imp, bits, block, symmetric)
        found = self._blocks[key]
        if found is None:
            return sens.dequantize(weight_kn, bits, block, symmetric)
        return weighted.dequantize(found, k, bits, block)

    def method(self) -> str:
        """What the probes' rounding was, for the manifest."""
        used = [name for name, count in self.counts.items() if count]
        return " + ".join(used) if used else "rtn"


def search_plan(
    ctx: ExportContext, nodes: list[str], config: Any, importance: Any = None
) -> tuple[dict[str, int], dict[str, Any]]:
    """(node name -> bits, the manifest's recipe record) for the options' target. `importance`:
    the export's importance statistics the writer rounds with, which the probes round with too
    (WriterRounding); None: the writer rounds by RTN."""
    metric, target, aim = aim_of(ctx.options)
    ids = calibration_ids(ctx)
    windows = [ids[i : i + WINDOW] for i in range(0, len(ids) - WINDOW + 1, WINDOW)]
    with ctx.reference.whole() as model:  # the search measures real KLs: the model whole
        ranked = ranked_groups(model, nodes, config, ids)
        rounding = None if importance is None else WriterRounding(ranked, importance, config)
        calib = sens.Calibration(
            model, windows[:SEARCH_WINDOWS], config.block_size, config.symmetric, rounding
        )

        def measure(k: int) -> float:
            kl, ppl_ratio = calib.score(sens.module_plan(ranked, k))
            return kl if metric == "kl" else ppl_ratio

        k, probes = sens.search_k(measure, len(ranked), aim)
    if k is None:
        raise out_of_reach(ctx.options, probes, "with every layer in 8 bits", "onnx-int8")
    calibration = {
        "tokens": int(sum(len(w) for w in windows[:SEARCH_WINDOWS])),
        "sensitivity": FISHER,
        "sensitivity_tokens": FISHER_WINDOW * FISHER_WINDOWS,
        "groups_in_8_bits": k,
        "groups": len(ranked),
        "probe_rounding": "rtn" if rounding is None else rounding.method(),
    }
    record = target_record(ctx.options, "smallest mixed int4/int8 plan with", calibration, probes)
    record["sensitivity"] = {g.role.key: round(g.sensitivity or 0.0, 6) for g in ranked}
    return sens.plan_for(ranked, k), record


def aim_of(options: Any) -> tuple[str, float, float]:
    """(the options' target metric, "kl" or "ppl_ratio"; its value; the value the search aims
    at on the calibration text: the target within MARGIN)."""
    metric = "kl" if options.target_kl is not None else "ppl_ratio"
    target = float(options.target_kl if metric == "kl" else options.target_ppl_ratio or 0)
    return metric, target, target * MARGIN if metric == "kl" else 1 + (target - 1) * MARGIN


def out_of_reach(options: Any, probes: list[sens.Probe], most: str, hint: str) -> EdgerunError:
    """The error of a target the search cannot meet even with `most` (its best probe)."""
    metric, target, _ = aim_of(options)
    words = metric.replace("_", " ")
    return EdgerunError(
        f"target {words} {target:g} is out of reach: {most} the calibration {words} is"
        f" {min(p.kl for p in probes):.4g}",
        f"raise the target, or export {hint}",
    )


def target_record(
    options: Any, what: str, calibration: dict[str, Any], probes: list[sens.Probe]
) -> dict[str, Any]:
    """The manifest's quant.recipe of a target search (the pipeline gates on its `target`)."""
    metric, target, aim = aim_of(options)
    return {
        "name": f"target-{metric.replace('_', '-')}",
        "description": f"{what} calibration {metric} <= {aim:.4g} (target {target:g} x margin"
        f" {MARGIN})",
        "target": {"metric": metric, "value": target, "margin": MARGIN, "aim": aim},
        "calibration": {
            **calibration,
            "probes": [{"k": p.k, metric: round(p.kl, 6)} for p in probes],
        },
    }
