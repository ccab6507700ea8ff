"""Peer: optimum's ORTModelForCausalLM (ONNX Runtime, KV cache) with transformers' ``generate``."""

from __future__ import annotations

from typing import Any

from benchmarks.runners import hf_generate
from benchmarks.workload import RowSpec

REQUIRES = {
    "optimum.onnxruntime": "pip install optimum-onnx",
    "transformers": "pip install transformers",
}


class OptimumRunner(hf_generate.HFGenerateRunner):
    def info(self) -> dict[str, Any]:
        import onnxruntime

        return {
            "library": f"onnxruntime {onnxruntime.__version__} via optimum ORTModelForCausalLM",
            "dir": self.path,
            "intra_op_num_threads": self.threads,
            "providers": self.model.providers if hasattr(self.model, "providers") else None,
        }


def load(spec: RowSpec, threads: int, max_len: int) -> OptimumRunner:
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForCausalLM

    assert spec.artifact is not None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    model = ORTModelForCausalLM.from_pretrained(
        spec.artifact, session_options=options, provider="CPUExecutionProvider", use_cache=True
    )
    return OptimumRunner(model, spec.artifact, threads)
