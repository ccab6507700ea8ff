"""Shared hypothesis settings for the parser fuzz tests.

The example count is small and the examples are derandomized by default, so the whole fuzz set
runs in seconds and CI is repeatable; a longer, random run (every fuzz test is named test_fuzz_*) is

    EDGERUN_FUZZ_EXAMPLES=20000 EDGERUN_FUZZ_RANDOM=1 .venv/bin/python -m pytest -q -k fuzz
"""

from __future__ import annotations

import os

import pytest

hypothesis = pytest.importorskip("hypothesis")

EXAMPLES = int(os.environ.get("EDGERUN_FUZZ_EXAMPLES", "200"))

#: For @FUZZ on a test: bounded examples, no per-example deadline (CI machines are noisy), and
#: function-scoped fixtures allowed (tests only use tmp_path / home, reset by hand where needed).
FUZZ = hypothesis.settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[
        hypothesis.HealthCheck.function_scoped_fixture,
        hypothesis.HealthCheck.too_slow,
    ],
    derandomize=os.environ.get("EDGERUN_FUZZ_RANDOM") is None,
)
