"""The validation reference: the source model in PyTorch fp32, the evaluation text and its tokens.

streamed_reference computes the reference log-probs layer by layer from the memory-mapped
safetensors (edgerun.exporters.stream) into a float32 file in the export's scratch directory:
no stage holds the whole fp32 model for it. load_model / torch_logits_fn are the whole model in
memory (the quality-target search, optimum's tracing, tests). Heavy imports (torch,
transformers) live inside the functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgerun.core.errors import EdgerunError, require
from edgerun.exporters.validate import LogitsFn, LogprobFile, Reference, check_eval_tokens, windows

DEFAULT_EVAL_TEXT = Path(__file__).parent / "data" / "eval.txt"


def load_model(path: Path) -> Any:
    """Load an HF causal LM in float32, eval mode, never running code shipped with it
    (edgerun.sources.remote_code); EdgerunError if transformers cannot."""
    require("torch", "export")
    import torch
    from transformers import AutoModelForCausalLM

    model = _load(AutoModelForCausalLM, path, dtype=torch.float32)
    model.eval()
    return model


def load_tokenizer(path: Path) -> Any:
    """transformers' AutoTokenizer of the checkpoint, never running code shipped with it;
    EdgerunError if transformers cannot load it."""
    require("transformers", "export")
    from transformers import AutoTokenizer

    return _load(AutoTokenizer, path)


def _load(auto: Any, path: Path, **kwargs: Any) -> Any:
    """`auto.from_pretrained(path)` with remote code refused; one EdgerunError line on failure."""
    from edgerun.sources.remote_code import no_remote_code

    try:
        with no_remote_code():
            return auto.from_pretrained(path, trust_remote_code=False, **kwargs)
    except EdgerunError:
        raise
    except (ValueError, KeyError, OSError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise EdgerunError(
            f"transformers cannot load {path}: {first[:200]}",
            "pass a causal LM checkpoint of an architecture transformers implements itself"
            " (edgerun never runs a model's own code)",
        ) from exc


def torch_logits_fn(model: Any) -> LogitsFn:
    """A LogitsFn that runs the PyTorch model over one window (no cache, no padding)."""
    import torch

    def logits(ids: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = model(input_ids=torch.from_numpy(ids[None, :].astype(np.int64)), use_cache=False)
        return out.logits[0].float().numpy()

    return logits


def streamed_reference(
    path: Path,
    token_ids: list[int],
    text: str,
    window: int,
    scratch: Path,
    detail: Any = None,
) -> Reference:
    """The validation reference of the checkpoint at `path` on `token_ids`, computed one decoder
    layer at a time (fp32 weights read from safetensors, dropped after each layer) and kept as
    float32 log-probs in scratch/reference-logprobs.npy. `detail(str)` shows progress. Equal to
    Reference(torch_logits_fn(load_model(path)), ...) up to float32 rounding of the log-probs."""
    from edgerun.exporters.stream import StreamedModel
    from edgerun.exporters.validate import log_softmax

    check_eval_tokens(len(token_ids))
    chunks = windows(token_ids, window)
    show = detail or (lambda message: None)
    with StreamedModel(path, on_unit=show) as streamed:
        hidden = streamed.hidden_states(chunks)
        store: LogprobFile | None = None
        with streamed.pinned(streamed.head_modules()):
            for i, ids in enumerate(chunks):
                show(f"head, window {i + 1}/{len(chunks)}")
                logprobs = log_softmax(streamed.logits(ids, hidden[i]))[:-1]
                if store is None:
                    rows = [len(c) - 1 for c in chunks]
                    store = LogprobFile(
                        scratch / "reference-logprobs.npy", rows, logprobs.shape[-1]
                    )
                store[i] = logprobs
                hidden[i] = None
    assert store is not None  # check_eval_tokens: at least one window
    return Reference.from_logprobs(chunks, store, text)


def read_eval_text(path: Path | None) -> str:
    """The evaluation text: `path`, or the one shipped with edgerun (comment lines `#` dropped
    from the shipped file only: they carry its provenance)."""
    return read_text_file(path, DEFAULT_EVAL_TEXT, "evaluation text", "--eval-text")


def read_text_file(path: Path | None, shipped: Path, what: str, option: str) -> str:
    """A user's text file (`path`; `what` it is and the `option` that names it, for errors) or
    the `shipped` one, whose `#` comment lines (its provenance) are dropped."""
    if path is None:
        lines = shipped.read_text(encoding="utf-8").splitlines(keepends=True)
        return "".join(line for line in lines if not line.startswith("#"))
    path = Path(path)
    if not path.is_file():
        raise EdgerunError(f"{what} not found: {path}", f"check the {option} path")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise EdgerunError(
            f"{path} is not UTF-8 text", f"pass a plain UTF-8 text file as {option}"
        ) from exc


def eval_token_ids(tokenizer: Any, text: str) -> list[int]:
    """Tokenize the evaluation text as one stream, with no special tokens added."""
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids
