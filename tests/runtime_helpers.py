"""Helpers shared by the runtime tests: export tiny artifacts, PyTorch reference generation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

PROFILE = "generic-x86_64"


def export_artifact(checkpoint: Path, fmt: str, out_dir: Path, **options: Any) -> Path:
    """Export `checkpoint` to `fmt` with edgerun.exporters (validation skipped: the exporter's
    tests cover it; these tests compare the runtime with PyTorch directly)."""
    from edgerun.exporters import export

    home = out_dir / ".home"
    converters = os.environ.get("EDGERUN_TEST_CONVERTERS")  # set for the session by conftest
    if converters and not (home / "converters").exists():
        home.mkdir(parents=True, exist_ok=True)
        (home / "converters").symlink_to(converters, target_is_directory=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGERUN_HOME", str(home))
        (result,) = export(
            str(checkpoint), [fmt], out_dir, no_validate=True, progress=False, **options
        )
    assert result.written and result.path is not None, result.reason
    return result.path


def torch_model(checkpoint: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(checkpoint).eval()


def torch_greedy(model: Any, prompt: list[int], n: int) -> list[int]:
    """n greedy tokens from transformers' generate(), end-of-sequence disabled."""
    import torch

    ids = torch.tensor([prompt])
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    return [int(t) for t in out[0, len(prompt) :]]


def torch_logits(model: Any, ids: list[int]) -> Any:
    """[len(ids), vocab] logits of one full forward pass (no cache), as numpy float32."""
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def damage_int4_scales(artifact: Path, factor: float = 3.0) -> None:
    """Multiply every MatMulNBits scale of an onnx-int4 artifact by `factor` and re-record its
    file hashes: an artifact whose files are consistent but compute wrongly, as a device whose
    kernels go wrong would (the file check alone cannot see that)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(artifact / "model.onnx"))
    scales = {n.input[2] for n in model.graph.node if n.op_type == "MatMulNBits"}
    assert scales, f"{artifact} has no MatMulNBits"
    for init in model.graph.initializer:
        if init.name in scales:
            array = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(array * array.dtype.type(factor), init.name))
    (artifact / "model.onnx_data").unlink()
    onnx.save_model(
        model, str(artifact / "model.onnx"), save_as_external_data=True, location="model.onnx_data"
    )
    rehash(artifact)


def rehash(artifact: Path) -> None:
    """Re-record an artifact's file hashes after its files were changed on purpose."""
    from edgerun.core.manifest import file_entries, read_manifest, write_manifest

    manifest = read_manifest(artifact)
    manifest.pop("schema_version")
    manifest["files"] = file_entries(artifact)
    write_manifest(artifact, manifest)
