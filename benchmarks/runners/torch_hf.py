"""Peer: transformers + PyTorch fp32 ``generate`` on the HF checkpoint itself."""

from __future__ import annotations

from benchmarks.runners.hf_generate import HFGenerateRunner

REQUIRES = {"torch": "pip install torch", "transformers": "pip install transformers"}


def load(
    path: str, profile: str | None = None, threads: int | None = None, context: int | None = None
) -> HFGenerateRunner:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads or 2)
    torch.set_num_interop_threads(1)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return HFGenerateRunner(model, {
        "library": f"torch {torch.__version__}",
        "dir": path,
        "num_threads": torch.get_num_threads(),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
    })  # fmt: skip
