"""Peer: transformers + PyTorch fp32 ``generate`` on the HF checkpoint itself."""

from __future__ import annotations

from typing import Any

from benchmarks.runners import hf_generate
from benchmarks.workload import RowSpec

REQUIRES = {"torch": "pip install torch", "transformers": "pip install transformers"}


class TorchRunner(hf_generate.HFGenerateRunner):
    def info(self) -> dict[str, Any]:
        import torch

        return {
            "library": f"torch {torch.__version__}",
            "dir": self.path,
            "num_threads": torch.get_num_threads(),
            "attn_implementation": getattr(self.model.config, "_attn_implementation", None),
        }


def load(spec: RowSpec, threads: int, max_len: int) -> TorchRunner:
    import torch
    from transformers import AutoModelForCausalLM

    assert spec.artifact is not None
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    model = AutoModelForCausalLM.from_pretrained(spec.artifact, dtype=torch.float32).eval()
    return TorchRunner(model, spec.artifact, threads)
