"""The interface every backend implements, and the artifact / settings objects it receives.

A backend turns token ids into next-token logits and keeps its own KV cache; everything else
(tokenization, sampling, stop handling, timing) is shared in edgerun.runtime.model, so every backend has
the same semantics. A third-party backend subclasses Backend and registers itself under the
entry-point group "edgerun.backends" (see edgerun.backends.registry).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from edgerun.core.errors import EdgerunError
from edgerun.core.home import read_json_object

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from edgerun.text.tokenizer import Tokenizer


@dataclass
class Artifact:
    """A model on disk: its directory, main file and manifest (synthesised for bare files)."""

    path: Path
    model_file: Path
    manifest: dict[str, Any]

    @property
    def family(self) -> str:
        return str(self.manifest.get("family", ""))

    @property
    def builder(self) -> str:
        return str(self.manifest.get("builder", ""))

    @property
    def format(self) -> str:
        return str(self.manifest.get("format", ""))

    def config(self) -> dict[str, Any]:
        """The HF config.json next to the model, or {} when there is none."""
        return read_json_object(self.path / "config.json")

    def weights_bytes(self) -> int:
        """Bytes of the model file plus its external-data files (model.onnx.data, ...)."""
        name = self.model_file.name
        return sum(
            f.stat().st_size
            for f in self.path.iterdir()
            if f.is_file() and (f.name == name or f.name.startswith((name + ".", name + "_")))
        )


def resolve_artifact(path: str | Path, verify: bool = False) -> Artifact:
    """An artifact directory (with edgerun.json) or a bare .gguf / .onnx file.

    Raises EdgerunError when the path is missing, the manifest is missing / corrupt / too new /
    names a file outside the directory, a listed file is missing or has a different size from
    the manifest (truncated copy), or its content fails the integrity check (small files hashed,
    large ones sampled; every file hashed in full with `verify`, see edgerun.core.integrity).
    """
    from edgerun.core.integrity import check_files
    from edgerun.core.manifest import read_manifest

    path = Path(path).expanduser()
    if path.is_file():
        return _bare_file(path)
    if not path.exists():
        raise EdgerunError(
            f"{path} does not exist", "pass an artifact directory, .gguf or .onnx file"
        )
    manifest = read_manifest(path)
    model_file = path / str(manifest["model_file"])
    check_files(path, manifest.get("files", []), full=verify)
    if not model_file.is_file():
        raise EdgerunError(f"{model_file} is missing", "re-export the artifact")
    return Artifact(path, model_file, manifest)


def _bare_file(path: Path) -> Artifact:
    """A manifest synthesised for a lone model file, with the defaults its format implies."""
    suffix = path.suffix.lower()
    if suffix == ".gguf":
        manifest = {"format": "gguf", "family": "gguf", "builder": "gguf"}
    elif suffix == ".onnx":
        genai = (path.parent / "genai_config.json").is_file()
        builder = "genai" if genai else "optimum"
        manifest = {"format": "onnx", "family": "onnx", "builder": builder}
    else:
        raise EdgerunError(
            f"{path} is neither .gguf nor .onnx", "pass an artifact directory or a model file"
        )
    return Artifact(path.parent, path, {**manifest, "model_file": path.name, "bare_file": True})


@dataclass
class Settings:
    """What the runtime asks of a backend: threads (None: backend default), the execution
    providers to try in order as (name, options), backend options from the profile merged with
    the caller's, and the context length to allocate for."""

    threads: int | None = None
    providers: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    context: int | None = None  # None: the backend's default (llama.cpp: the trained context)


class Backend(ABC):
    """One loaded model in one runtime, generating a single sequence.

    Call order: prefill(prompt ids) once per generation, then decode(token) per new token; each
    returns the next-token logits as a 1-D array that stays valid until the next call.
    """

    name: ClassVar[str]
    # (module to import, pip extra that provides it)
    requires: ClassVar[tuple[str, str] | None] = None
    # Whether Settings.providers (ONNX Runtime execution providers) mean anything here.
    uses_providers: ClassVar[bool] = False

    providers: list[str]
    threads: int | None
    # What the backend could not honour ("wanted GPU offload, running CPU"); strict makes it fatal.
    fallbacks: list[str] = []
    # Bytes the load added to this process, measured, where the backend copies the weights out
    # of the file (ONNX Runtime's prepacked kernels); None: the weights are the file, mapped.
    loaded_bytes: int | None = None
    # True where those bytes are mapped from a file (ORT's packed weights from the
    # map_prepacked cache): pages the kernel can drop, shared between processes, but resident
    # while the model runs, so the budget counts them beside this process's anonymous memory.
    loaded_mapped: bool = False

    @classmethod
    @abstractmethod
    def accepts(cls, artifact: Artifact) -> bool:
        """Whether this backend can run `artifact`."""

    @classmethod
    def available_providers(cls) -> list[str]:
        """Execution providers this installation offers (for profile provider selection)."""
        return []

    @abstractmethod
    def __init__(self, artifact: Artifact, settings: Settings) -> None:
        """Load the model; raise EdgerunError if the file is corrupt or unsupported."""

    @abstractmethod
    def prefill(self, ids: Sequence[int], total: int) -> np.ndarray:
        """Start a new sequence with `ids` (one pass); `total` is the most tokens it will hold.
        Returns the logits for the token after the prompt."""

    @abstractmethod
    def decode(self, token_id: int) -> np.ndarray:
        """Append one token and return the logits for the next."""

    # Whether verify() / rollback() work: speculative decoding (edgerun.runtime.speculative) uses them.
    can_verify: bool = False
    # Whether verify()'s logits equal decode()'s bit for bit (then "auto" speculates).
    exact_verify: bool = False

    def verify(self, ids: Sequence[int]) -> np.ndarray:
        """Append `ids` in ONE forward pass and return the logits after each of them
        ([len(ids), vocab], valid until the next call)."""
        raise NotImplementedError(f"{self.name} cannot verify several tokens in one pass")

    def rollback(self, length: int) -> None:
        """Forget every position from `length` on (drafts the target rejected)."""
        raise NotImplementedError(f"{self.name} cannot roll its KV cache back")

    # Whether snapshot() / resume() work: the prompt cache (edgerun.runtime.kvcache) uses them.
    can_snapshot: bool = False
    # Where a cached prefix may end so that feeding the rest in one batch gives the KV cache a
    # cold prefill gives, bit for bit: kernels that take a batch's rows in blocks compute a
    # short last block another way (llama.cpp's repacked x86 q4_0 / q4_K: blocks of 4 rows).
    # Reused positions are cut down to a multiple of it (1: anywhere). Unless exact_verify,
    # only prefill positions are reused: one-token decode steps round differently.
    prefix_align: int = 1

    def snapshot(self, length: int | None = None) -> tuple[Any, int] | None:
        """A copy of the first `length` positions of the KV cache (None: all of them) and its
        size in bytes, for edgerun.runtime.kvcache; None when this backend cannot copy its cache
        (then prompts are never reused). The positions after `length` may be dropped from the
        live cache too: the caller does not decode on after a snapshot."""
        return None

    def resume(self, state: Any, keep: int, ids: Sequence[int], total: int) -> np.ndarray:
        """Like prefill(ids, total), but start from a snapshot() `state` whose first `keep`
        positions hold ids[:keep]; only ids[keep:] (at least one token) is computed."""
        raise NotImplementedError(f"{self.name} does not restore KV snapshots")

    def tokenizer(self) -> Tokenizer | None:
        """A tokenizer embedded in the model file (GGUF), or None."""
        return None

    def kv_bytes_per_token(self) -> int | None:
        """KV-cache bytes per context position, when the backend knows it."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook, most backends override it
        """Free the model's memory; the object is unusable afterwards."""


# Context sizes when the caller gives none: the trained context (manifest, then config.json),
# else DEFAULT_CONTEXT, and never more than MAX_DEFAULT_CONTEXT positions (llama.cpp's own
# default): a 32k-trained model would otherwise reserve its whole KV cache on a small device.
DEFAULT_CONTEXT = 2048
MAX_DEFAULT_CONTEXT = 4096


def kv_bytes_per_token(config: dict[str, Any], dtype_bytes: int = 4) -> int | None:
    """KV-cache bytes per position from an HF config (keys and values, every layer)."""
    try:
        layers = int(config["num_hidden_layers"])
        heads = int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
    except (KeyError, TypeError, ValueError):
        return None
    return 2 * layers * kv_heads * head_dim * dtype_bytes
