"""The fixture every registry asks for, in one place: adding a power meter, a backend or a GGUF
quirk is its module, one registry line and one line here (tests/test_registries.py fails when a
registered name has none). Model families' tiny checkpoints are FAMILY_SPECS in
tests/tiny_models.py; device profiles' fake machines are folders in tests/data/machines/.
Importable on a lean install: nothing here needs torch, llama.cpp or gguf-py."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgerun.power import battery, jetson, nvml, rapl, rpi5
from edgerun.power.base import Meter
from tests.power_fakes import DATA, battery_tree, jetson_orin_hwmon, rapl_tree


def _nvml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Meter:
    from tests.test_power_sampler import fake_pynvml

    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(energy_supported=True))
    return nvml.probe()


# meter name -> a working meter of that kind on fake hardware
METER_FIXTURES: dict[str, Callable[[Path, pytest.MonkeyPatch], Meter]] = {
    "rapl": lambda root, mp: rapl.probe(rapl_tree(root)),
    "jetson": lambda root, mp: jetson.probe(jetson_orin_hwmon(root)),
    "rpi5": lambda root, mp: rpi5.probe(runner=lambda: (DATA / "vcgencmd_pmic_read_adc.txt").read_text()),
    "nvml": _nvml,
    "battery": lambda root, mp: battery.probe(battery_tree(root)),
}  # fmt: skip


# Every registered backend -> (library it needs, format, builder) of its tiny artifact here
# (tests/test_registries.py fails when a backend has none).
BACKEND_ARTIFACTS: dict[str, tuple[str, str, str]] = {
    # optimum's graph for edgerun's ORT loop (auto would pick genai's, the "genai" one below)
    "onnxruntime": ("onnxruntime", "onnx-fp32", "optimum"),
    "llamacpp": ("llama_cpp", "gguf-f32", "auto"),
    "genai": ("onnxruntime_genai", "onnx-fp32", "genai"),
}


# Each GGUF quirk (edgerun.exporters.gguf.quirks) -> knobs llama.cpp runs wrongly, and right ones.
QUIRK_CHECKPOINTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "gemma3_text": (
        {"sliding_window": 16, "layer_types": ["sliding_attention", "full_attention"]},
        {"sliding_window": 16, "layer_types": ["sliding_attention"] * 5 + ["full_attention"]},
    ),
    "smollm3": ({"no_rope_layers": [1, 0]}, {"no_rope_layers": [1, 1, 1, 0]}),
    "phi": (
        {"hidden_size": 64, "intermediate_size": 128},
        {"hidden_size": 64, "intermediate_size": 256},
    ),
}


# model_type -> (config arguments of a checkpoint the converter is given other keys for, those
# keys, config arguments of one it reads as it is): configs as transformers saves them.
QUIRK_FIXES: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    "falcon": (
        {"multi_query": True, "new_decoder_architecture": False},  # Falcon-7B
        {"num_kv_heads": 1},
        {"new_decoder_architecture": True, "num_kv_heads": 2},  # Falcon-40B
    ),
}
