"""The SentencePiece-style GGUF vocabulary built from tokenizer.json (edgerun.exporters.gguf.spm_vocab)
is the one llama.cpp's converter builds from tokenizer.model; what is not SentencePiece is refused.
(Conversion, parity and running: tests/test_families.py, TOKENIZER_JSON_ONLY.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sentencepiece")
pytest.importorskip("transformers")

from edgerun.core.errors import EdgerunError  # noqa: E402
from edgerun.exporters.gguf import spm_vocab  # noqa: E402
from edgerun.exporters.gguf.spm_vocab import (  # noqa: E402
    BYTE,
    CONTROL,
    NORMAL,
    UNKNOWN,
    UNUSED,
    USER_DEFINED,
    sentencepiece_vocab,
)
from tests.tiny_models import build_spm_tokenizer, build_tokenizer  # noqa: E402


def _from_tokenizer_model(ckpt: Path, size: int) -> spm_vocab.Vocab:
    """What llama.cpp's _create_vocab_sentencepiece makes of tokenizer.model and the added tokens
    of tokenizer_config.json (conversion/base.py), restated with sentencepiece."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(ckpt / "tokenizer.model"))
    tokens = [f"[PAD{i}]".encode() for i in range(size)]
    scores, types = [-10000.0] * size, [UNUSED] * size
    for i in range(sp.vocab_size()):
        tokens[i], scores[i] = sp.IdToPiece(i).encode(), sp.GetScore(i)
        types[i] = (
            UNKNOWN if sp.IsUnknown(i) else CONTROL if sp.IsControl(i) else
            BYTE if sp.IsByte(i) else NORMAL
        )  # fmt: skip
    config = json.loads((ckpt / "tokenizer_config.json").read_text(encoding="utf-8"))
    for i, token in config["added_tokens_decoder"].items():
        special = token["special"] or token["content"].startswith("<|")  # looks special
        tokens[int(i)], scores[int(i)] = token["content"].encode(), -1000.0
        types[int(i)] = CONTROL if special else USER_DEFINED
    return tokens, scores, types


@pytest.mark.parametrize("dummy_prefix", [True, False], ids=["phi3-style", "gemma-style"])
def test_the_vocabulary_is_the_one_tokenizer_model_gives(tmp_path: Path, dummy_prefix: bool):
    build_spm_tokenizer(tmp_path, dummy_prefix=dummy_prefix)
    data = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    got = sentencepiece_vocab(data, 400, lambda token: token.startswith("<|"))
    want = _from_tokenizer_model(tmp_path, 400)
    assert got[0] == want[0]  # pieces, and [PADn] up to the model's vocab size
    assert got[2] == want[2]  # token types
    assert got[1] == want[1]  # scores: merge ranks are SentencePiece's scores
    assert BYTE in got[2] and got[0][got[2].index(BYTE)] == b"<0x00>"


def test_a_unigram_vocabulary_keeps_its_scores() -> None:
    from tokenizers import Tokenizer, models, normalizers

    pieces = [("<unk>", 0.0), ("<0x41>", 0.0), ("\u2581a", -1.5), ("b", -2.25), ("\u2581ab", -3.0)]
    tok = Tokenizer(models.Unigram(pieces, unk_id=0, byte_fallback=True))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]
    )
    tok.add_special_tokens(["<eos>"])
    tokens, scores, types = sentencepiece_vocab(json.loads(tok.to_str()), None)
    assert tokens == [b"<unk>", b"<0x41>", "\u2581a".encode(), b"b", "\u2581ab".encode(), b"<eos>"]
    assert scores == [0.0, 0.0, -1.5, -2.25, -3.0, -1000.0]
    assert types == [UNKNOWN, BYTE, NORMAL, NORMAL, NORMAL, CONTROL]


def _spm_json(tmp_path: Path) -> dict[str, Any]:
    build_spm_tokenizer(tmp_path)
    data: dict[str, Any] = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    return data


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda d: d.update(normalizer={"type": "NFKC"}), r"normalizes text \(NFKC\)"),
        (lambda d: d.update(pre_tokenizer={"type": "Whitespace"}), r"splits text \(Whitespace\)"),
        (lambda d: d["model"].update(byte_fallback=False), "BPE .byte-level. vocabulary"),
    ],
    ids=["normalizer", "pre-tokenizer", "no byte fallback"],
)
def test_what_llama_cpp_would_tokenize_otherwise_is_refused(
    tmp_path: Path, change: Any, message: str
) -> None:
    data = _spm_json(tmp_path)
    change(data)
    with pytest.raises(EdgerunError, match=message):
        sentencepiece_vocab(data, None)


def test_a_byte_level_bpe_vocabulary_is_refused(tmp_path: Path) -> None:
    build_tokenizer(tmp_path)
    data = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    with pytest.raises(EdgerunError, match="not a SentencePiece one") as err:
        sentencepiece_vocab(data, None)
    assert "tokenizer.model" in err.value.hint
