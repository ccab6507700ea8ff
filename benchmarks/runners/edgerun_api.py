"""edgerun: an artifact through the public API, ``edgerun.load`` + ``model.generate``."""

from __future__ import annotations

from typing import Any

from benchmarks.runners import Stamp
from benchmarks.workload import RowSpec

REQUIRES = {"edgerun.model": "the edgerun runtime (edgerun/model.py) is not in this checkout"}


class EdgerunRunner:
    def __init__(self, model: Any, path: str) -> None:
        self.model = model
        self.path = path

    def run(self, ids: list[int], max_new: int, stamp: Stamp) -> dict[str, Any]:
        for chunk in self.model.generate(ids, max_tokens=max_new, temperature=0, ignore_eos=True):
            if chunk.token_id is not None:  # a last text-only chunk carries no token
                stamp(int(chunk.token_id))
        stats = self.model.last_stats
        # edgerun's own timing of the same call, kept next to the suite's as a cross-check
        return {"self_decode_tok_s": stats.decode_tok_s, "self_ttft_s": stats.ttft_s}

    def info(self) -> dict[str, Any]:
        info = self.model.info
        data: dict[str, Any] = info.to_json() if hasattr(info, "to_json") else {"info": str(info)}
        data["artifact"] = self.path
        return data


def load(spec: RowSpec, threads: int, max_len: int) -> EdgerunRunner:
    import edgerun

    assert spec.artifact is not None
    return EdgerunRunner(
        edgerun.load(spec.artifact, threads=threads, context=max_len), spec.artifact
    )
