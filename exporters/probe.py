"""A short decode-speed probe of a freshly exported artifact, so that size, fidelity and speed are
seen together: an artifact whose kernels are an order of magnitude slower shows at export time.

It is a probe, not a benchmark: a few greedy decodes of 32 tokens after a 64-token prompt through
`edgerun.load` (the backend and threads a user would get), on the exporting machine, median of the
per-token times. `edgerun bench` is the measurement; the manifest labels this as a probe and names
the CPU it ran on.
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

from edgerun.core.errors import EdgerunError

if TYPE_CHECKING:  # pragma: no cover
    from edgerun.runtime.model import Model

PROMPT_TOKENS = 64
TOKENS = 32
ROUNDS = 3  # after one warm-up round


def probe_model(model: Model, prompt: str) -> dict[str, Any]:
    """Time greedy decoding of a model loaded with edgerun.load (edgerun.exporters.runtime_check
    loads the artifact once for this and the KV-cache check): the manifest's `probe` block.
    EdgerunError when it generates nothing."""
    from edgerun.device.machine import machine_facts

    ids = model.tokenizer.encode(prompt, add_special_tokens=False)[:PROMPT_TOKENS]
    if not ids:
        raise EdgerunError("the probe prompt tokenized to nothing", "report this as a bug")
    per_round = []
    for _ in range(ROUNDS + 1):
        for _chunk in model.generate(ids, max_tokens=TOKENS + 1, ignore_eos=True):
            pass
        latencies = model.last_stats.token_latencies_s
        per_round.append(statistics.median(latencies[1:]) if len(latencies) > 1 else None)
    times = [t for t in per_round[1:] if t is not None]
    if not times:
        raise EdgerunError("the probe generated no tokens", "check the artifact with edgerun run")
    ms = statistics.median(times) * 1e3
    info = model.info
    return {
        "what": "short greedy decode on the exporting machine: a probe, not a benchmark",
        "decode_ms_per_token": round(ms, 3),
        "decode_tok_s": round(1e3 / ms, 1),
        "prompt_tokens": len(ids),
        "tokens": TOKENS,
        "rounds": ROUNDS,
        "backend": info.backend,
        "providers": info.providers,
        "threads": info.threads,
        "cpu": machine_facts().cpu_model,
    }
