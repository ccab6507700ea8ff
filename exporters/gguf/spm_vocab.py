"""A SentencePiece-style ("llama") GGUF vocabulary from tokenizer.json, for checkpoints that ship no
tokenizer.model (fine-tunes saved with a fast tokenizer only: Gemma, Gemma 2, Phi-3, ...).

llama.cpp's converter reads such families' vocabulary from tokenizer.model (`TextModel.
_create_vocab_sentencepiece`): every piece with its score and token type. tokenizer.json holds the
same pieces. A Unigram model lists them with their scores. A BPE model with byte fallback (what
transformers converts a SentencePiece BPE model to) lists them with its merges, ordered as
SentencePiece merges: its score for a merged piece is minus its merge rank, and llama.cpp's
SentencePiece tokenizer merges the best-scored pair first, so the ranks reproduce it; pieces no
merge makes (single characters) follow, as SentencePiece orders them. Byte pieces <0xNN> are BYTE,
the unknown piece UNKNOWN; added tokens are then CONTROL or USER_DEFINED with score -1000, by
the converter's own rule. edgerun.exporters.gguf.convert_main hands this to the converter in place
of tokenizer.model; tokenizer parity against HF is measured after conversion, as for every GGUF.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgerun.core.errors import EdgerunError

# gguf-py's SentencePieceTokenTypes (gguf/vocab.py): the token types llama.cpp reads
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
ADDED_SCORE = -1000.0  # the converter's score for added tokens
PAD_SCORE = -10000.0  # and for ids no piece fills
MAX_VOCAB = 1 << 21  # the largest real vocabularies hold 262,144 tokens (Gemma 3)
SPACE = "\u2581"  # SentencePiece's escaped space
_BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")
# tokenizer.json normalizer / pre-tokenizer steps that only escape spaces as SentencePiece does
# (llama.cpp's tokenizer does the same); any other step changes text llama.cpp would not change
_NORMALIZERS = {("Replace", " "), ("Prepend", SPACE)}
_PRE_TOKENIZERS = {"Metaspace"}

Vocab = tuple[list[bytes], list[float], list[int]]


def sentencepiece_vocab(
    tokenizer_json: dict[str, Any],
    vocab_size: int | None,
    looks_special: Callable[[str], bool] = lambda token: False,
) -> Vocab:
    """Tokens, scores and token types of the GGUF "llama" vocabulary, `vocab_size` entries (at
    least as many as the tokenizer has). `looks_special`: the converter's rule for added tokens
    that are control tokens without saying so. Raises EdgerunError when tokenizer.json is not a
    SentencePiece-style vocabulary (Unigram, or BPE with byte fallback) or normalizes text in a
    way llama.cpp does not."""
    model = tokenizer_json.get("model") or {}
    added = tokenizer_json.get("added_tokens") or []
    if model.get("type") == "Unigram":
        pieces = _unigram_pieces(model)
    elif model.get("type") == "BPE" and model.get("byte_fallback"):
        pieces = _bpe_pieces(model, {str(t["content"]) for t in added})
    else:
        kind = model.get("type", "?") + ("" if model.get("type") != "BPE" else " (byte-level)")
        raise EdgerunError(
            f"tokenizer.json holds a {kind} vocabulary, not a SentencePiece one",
            "add the model's tokenizer.model, or export to ONNX",
        )
    _check_text_steps(tokenizer_json)
    ids = [*(i for _, i, _, _ in pieces), *(int(t["id"]) for t in added)]
    size = max(vocab_size or 0, max(ids, default=-1) + 1)
    if min(ids, default=0) < 0 or size > MAX_VOCAB:
        raise EdgerunError(
            f"tokenizer.json has token ids outside 0..{MAX_VOCAB} (vocabulary of {size})",
            "the tokenizer is damaged: re-download the model",
        )
    tokens = [f"[PAD{i}]".encode() for i in range(size)]
    scores, types = [PAD_SCORE] * size, [UNUSED] * size
    for piece, i, score, kind in pieces:
        tokens[i], scores[i], types[i] = piece.encode("utf-8"), score, kind
    for token in added:
        i, text = int(token["id"]), str(token["content"])
        special = bool(token.get("special")) or looks_special(text)
        if not special:
            text = text.replace(SPACE, " ")  # the converter pre-normalizes user-defined spaces
        tokens[i], scores[i] = text.encode("utf-8"), ADDED_SCORE
        types[i] = CONTROL if special else USER_DEFINED
    return tokens, scores, types


def _check_text_steps(data: dict[str, Any]) -> None:
    normalizer = data.get("normalizer") or {}
    steps = normalizer.get("normalizers", [normalizer] if normalizer else [])
    for step in steps:
        pattern = step.get("pattern") or {}
        key = (
            step.get("type"),
            pattern.get("String") if "pattern" in step else step.get("prepend"),
        )
        if key not in _NORMALIZERS:
            raise EdgerunError(
                f"tokenizer.json normalizes text ({step.get('type', '?')}) beyond escaping spaces,"
                " which llama.cpp's SentencePiece tokenizer does not do",
                "add the model's tokenizer.model, or export to ONNX",
            )
    pre = data.get("pre_tokenizer") or {}
    pre_steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    for step in pre_steps:
        if step and step.get("type") not in _PRE_TOKENIZERS:
            raise EdgerunError(
                f"tokenizer.json splits text ({step.get('type', '?')}) before its SentencePiece"
                " model, which llama.cpp's SentencePiece tokenizer does not do",
                "add the model's tokenizer.model, or export to ONNX",
            )


def _kind(piece: str, byte_fallback: bool, unk: str | None) -> int:
    if piece == unk:
        return UNKNOWN
    return BYTE if byte_fallback and _BYTE_PIECE.fullmatch(piece) else NORMAL


def _unigram_pieces(model: dict[str, Any]) -> list[tuple[str, int, float, int]]:
    """(piece, id, score, type) of a Unigram model: its own log-probability scores."""
    vocab = model.get("vocab") or []
    unk_id = model.get("unk_id")
    unk = vocab[unk_id][0] if isinstance(unk_id, int) and 0 <= unk_id < len(vocab) else None
    fallback = bool(model.get("byte_fallback"))
    return [
        (str(piece), i, float(score), _kind(str(piece), fallback, unk))
        for i, (piece, score) in enumerate(vocab)
    ]


def _bpe_pieces(model: dict[str, Any], added: set[str]) -> list[tuple[str, int, float, int]]:
    """(piece, id, score, type) of a byte-fallback BPE model, scored by merge rank (`added`:
    the added tokens, scored as such later)."""
    rank: dict[str, int] = {}
    merges = model.get("merges") or []
    for n, merge in enumerate(merges):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        rank.setdefault(left + right, n)
    unk = model.get("unk_token")
    pieces, unmerged = [], len(merges)
    for piece, i in sorted((model.get("vocab") or {}).items(), key=lambda item: item[1]):
        kind = _kind(piece, True, unk)
        if kind != NORMAL or piece in added:
            score = 0.0
        elif piece in rank:
            score = -float(rank[piece])
        else:  # SentencePiece scores the single characters after every merged piece
            score, unmerged = -float(unmerged), unmerged + 1
        pieces.append((piece, int(i), score, kind))
    return pieces


def read_tokenizer_json(checkpoint: Path) -> dict[str, Any]:
    """tokenizer.json of `checkpoint`, bounded and checked (edgerun.core.untrusted)."""
    from edgerun.core.untrusted import read_json_object

    return read_json_object(
        checkpoint / "tokenizer.json", "the checkpoint's tokenizer.json is damaged"
    )
