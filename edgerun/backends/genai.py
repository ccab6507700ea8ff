"""onnxruntime-genai backend, for artifacts made by its model builder (genai_config.json).

Drives og.Generator one token at a time with append_tokens() and reads get_logits(), so the
token choice is edgerun's shared sampler rather than genai's search; genai keeps the KV cache
(past_present_share_buffer) in its own pre-allocated buffers sized by max_length.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgerun.backends.base import Artifact, Backend, Settings
from edgerun.core.errors import EdgerunError

# ONNX Runtime provider name -> (genai provider name, og.is_*_available attribute)
_PROVIDERS = {
    "CUDAExecutionProvider": ("cuda", "is_cuda_available"),
    "DmlExecutionProvider": ("dml", "is_dml_available"),
    "ROCMExecutionProvider": ("rocm", "is_rocm_available"),
    "QNNExecutionProvider": ("QNN", "is_qnn_available"),
    "OpenVINOExecutionProvider": ("OpenVINO", "is_openvino_available"),
    "WebGpuExecutionProvider": ("WebGPU", "is_webgpu_available"),
}
_CPU = "CPUExecutionProvider"


class GenaiBackend(Backend):
    """og.Model + og.Generator on a genai-built artifact."""

    name = "genai"
    requires = ("onnxruntime_genai", "genai")
    uses_providers = True

    @classmethod
    def accepts(cls, artifact: Artifact) -> bool:
        return artifact.family == "onnx" and (
            artifact.builder == "genai" or (artifact.path / "genai_config.json").is_file()
        )

    @classmethod
    def available_providers(cls) -> list[str]:
        import onnxruntime_genai as og

        found = [
            ort for ort, (_, probe) in _PROVIDERS.items() if getattr(og, probe, lambda: False)()
        ]
        return [*found, _CPU]

    def __init__(self, artifact: Artifact, settings: Settings) -> None:
        import onnxruntime_genai as og

        self._og = og
        config_file = artifact.path / "genai_config.json"
        if not config_file.is_file():
            raise EdgerunError(f"{config_file} is missing", "re-export with the genai builder")
        try:
            config = og.Config(str(artifact.path))
            self.providers = self._set_providers(config, settings.providers, config_file)
            self.threads = settings.threads
            if settings.threads:
                config.overlay(json.dumps(_session_overlay(settings.threads)))
            self.model = og.Model(config)
        except EdgerunError:
            raise
        except Exception as exc:  # genai raises RuntimeError / OrtException for bad files
            raise EdgerunError(
                f"onnxruntime-genai cannot load {artifact.path}: {exc}",
                "the model files are corrupt or incomplete: re-export the artifact",
            ) from exc
        meta = json.loads(config_file.read_text())["model"]
        self.context_length = int(settings.context or meta.get("context_length") or 2048)
        self.context_length = min(self.context_length, int(meta.get("context_length") or 1 << 30))
        self.vocab_size = int(meta["vocab_size"])
        self._generator: Any = None

    @staticmethod
    def _set_providers(
        config: Any, wanted: list[tuple[str, dict[str, Any]]], config_file: Any
    ) -> list[str]:
        """Override genai_config's providers with the profile's; return what was configured
        (genai does not report the session's active providers, so this is what it was told)."""
        if not wanted:
            options = json.loads(config_file.read_text())["model"]["decoder"]["session_options"]
            names = [next(iter(p)) for p in options.get("provider_options", [])]
            return [*(_ort_name(n) for n in names), _CPU]
        config.clear_providers()
        configured = []
        for name, options in wanted:
            if name == _CPU:
                continue
            short = _PROVIDERS[name][0] if name in _PROVIDERS else name
            config.append_provider(short)
            for key, value in options.items():
                config.set_provider_option(short, str(key), str(value))
            configured.append(name)
        return [*configured, _CPU]

    def prefill(self, ids: Sequence[int], total: int) -> np.ndarray:
        og = self._og
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=min(total, self.context_length), do_sample=False)
        self._generator = og.Generator(self.model, params)
        self._generator.append_tokens(np.asarray(ids, np.int32))
        return self._logits()

    def decode(self, token_id: int) -> np.ndarray:
        self._generator.append_tokens(np.array([token_id], np.int32))
        return self._logits()

    def _logits(self) -> np.ndarray:
        return self._generator.get_logits().reshape(-1)[-self.vocab_size :]

    def close(self) -> None:
        self._generator = None
        self.__dict__.pop("model", None)


def _ort_name(genai_name: str) -> str:
    for ort, (short, _) in _PROVIDERS.items():
        if short.lower() == genai_name.lower():
            return ort
    return genai_name


def _session_overlay(threads: int) -> dict[str, Any]:
    return {"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}
