"""Installed versions of distributions, read from package metadata (nothing is imported): the one
place the manifests, bench results and lab devices get their library versions from."""

from __future__ import annotations

from collections.abc import Iterable
from importlib import metadata

# edgerun and every runtime library a benchmark may use: what makes two devices' numbers comparable.
RUNTIME = (
    "edgerun",
    "onnxruntime",
    "onnxruntime-genai",
    "llama-cpp-python",
    "numpy",
    "psutil",
    "nvidia-ml-py",
)


def versions(names: Iterable[str], missing: bool = False) -> dict[str, str | None]:
    """{distribution: version} for `names`; a missing one is left out, or given as None with
    `missing`."""
    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            if missing:
                found[name] = None
    return found
