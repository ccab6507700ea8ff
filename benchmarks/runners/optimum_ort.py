"""Peer: optimum's ORTModelForCausalLM (ONNX Runtime, KV cache) with transformers' ``generate``."""

from __future__ import annotations

from benchmarks.runners.hf_generate import HFGenerateRunner

REQUIRES = {
    "optimum.onnxruntime": "pip install optimum-onnx",
    "transformers": "pip install transformers",
}


def load(
    path: str, profile: str | None = None, threads: int | None = None, context: int | None = None
) -> HFGenerateRunner:
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForCausalLM

    threads = threads or 2
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    model = ORTModelForCausalLM.from_pretrained(
        path, session_options=options, provider="CPUExecutionProvider", use_cache=True
    )
    return HFGenerateRunner(model, {
        "library": f"onnxruntime {ort.__version__} via optimum ORTModelForCausalLM",
        "dir": path,
        "intra_op_num_threads": threads,
        "providers": model.providers if hasattr(model, "providers") else None,
    })  # fmt: skip
