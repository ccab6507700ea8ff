"""GGUF tokenizer metadata: llama.cpp must tokenize exactly like the HF tokenizer it came from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")

from edgerun.core.errors import EdgerunError  # noqa: E402
from edgerun.exporters.gguf import converter, pretokenizers  # noqa: E402
from edgerun.exporters.gguf.convert import convert  # noqa: E402
from edgerun.exporters.gguf.runtime import tokenize  # noqa: E402
from edgerun.exporters.reference import read_eval_text  # noqa: E402

HARD_TEXT = (
    "Ünïcödé — naïve café, 東京, Привет 🙂🦙 emoji\u200d joins\n"
    "digits 0 12 345 6789 3.14159 1,000,000 2024-11-23\n"
    "runs of spaces:  two   three    four\t\ttabs\n\n\nblank lines \n"
    "def f(x):\n    return {'k': x ** 2}  # code\n"
    "I've 'RE we'll don't"
)


def _hf(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# byte-level BPE (GPT-2 / Qwen style) and SentencePiece with byte fallback (Llama 2 / Gemma style)
@pytest.fixture(scope="module", params=["llama", "qwen2", "llama-spm", "gemma"])
def converted(request, tmp_path_factory):
    """(checkpoint dir, HF tokenizer, GGUF path) for a tiny family checkpoint, converted to f16."""
    from transformers import AutoTokenizer

    from tests.tiny_models import build_family_model

    root = tmp_path_factory.mktemp(f"tok-{request.param}")
    ckpt = build_family_model(request.param, root / "src")
    out = root / "model.gguf"
    convert(converter.ensure(), ckpt, out, "f16")
    return ckpt, AutoTokenizer.from_pretrained(ckpt), out


@pytest.mark.parametrize("which", ["eval", "hard"])
def test_llama_cpp_tokenizes_like_hf(converted, which):
    _, tokenizer, gguf_path = converted
    text = read_eval_text(None) if which == "eval" else HARD_TEXT
    assert tokenize(gguf_path, text) == _hf(tokenizer, text)


def test_special_tokens_in_text_are_parsed_like_hf(converted):
    _, tokenizer, gguf_path = converted
    text = "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenize(gguf_path, text, special=True)
    assert ids == _hf(tokenizer, text)
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")


def test_metadata_written(converted):
    import gguf

    ckpt, tokenizer, gguf_path = converted
    reader = gguf.GGUFReader(gguf_path)

    def field(key):
        return reader.get_field(key).contents()

    if (ckpt / "tokenizer.model").is_file():
        assert field("tokenizer.ggml.model") in ("llama", "gemma")  # llama.cpp's SPM vocab
        assert field("tokenizer.ggml.tokens")[3] == "<|endoftext|>"  # user-defined tokens kept
        assert "<|im_start|>" in field("tokenizer.chat_template")
        return
    assert field("tokenizer.ggml.model") == "gpt2"
    # The fixture tokenizer is GPT-2 style ByteLevel: mapped from its pre-tokenizer shape.
    assert field("tokenizer.ggml.pre") == "gpt-2"
    assert len(field("tokenizer.ggml.tokens")) == 384
    assert field("tokenizer.ggml.bos_token_id") == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    generation = json.loads((ckpt / "generation_config.json").read_text())
    assert field("tokenizer.ggml.eos_token_id") == generation["eos_token_id"]
    assert field("tokenizer.ggml.add_bos_token") is False  # the fixture adds no BOS
    assert "<|im_start|>" in field("tokenizer.chat_template")
    merges = field("tokenizer.ggml.merges")
    assert merges and all(len(m.split(" ")) == 2 for m in merges)


def test_shape_table_maps_known_pre_tokenizers():
    gpt2 = {"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}}
    smollm = {
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Digits", "individual_digits": True},
                {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
            ],
        }
    }
    qwen2 = {
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": pretokenizers.QWEN2_REGEX}},
                {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False},
            ],
        }
    }
    table = pretokenizers.PRE_TOKENIZER_SHAPES
    assert table[pretokenizers.shape(gpt2)] == "gpt-2"
    assert table[pretokenizers.shape(smollm)] == "smollm"
    assert table[pretokenizers.shape(qwen2)] == "qwen2"


def _save_tokenizer(tok, out: Path):
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(out)
    return PreTrainedTokenizerFast.from_pretrained(out)


def _trained(pre_tokenizer, model=None):
    from tokenizers import Tokenizer, models, trainers

    from tests.tiny_models import training_corpus

    tok = Tokenizer(model or models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    trainer = (trainers.BpeTrainer if model is None else trainers.UnigramTrainer)(
        vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False
    )
    tok.train_from_iterator(training_corpus(), trainer=trainer)
    return tok


def test_unknown_pre_tokenizer_is_refused(tmp_path):
    from tokenizers import pre_tokenizers

    # ByteLevel after a whitespace split: no llama.cpp pre-tokenizer does this.
    tok = _trained(
        pre_tokenizers.Sequence(
            [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    )
    hf = _save_tokenizer(tok, tmp_path)
    with pytest.raises(EdgerunError, match="matches no llama.cpp pre-tokenizer"):
        pretokenizers.pre_tokenizer_name(hf, tmp_path)


@pytest.mark.slow
def test_smollm2_parity_and_pre_name(smollm2_dir, tmp_path):
    import gguf

    from edgerun.exporters.formats import ReferenceModel

    ref = ReferenceModel(smollm2_dir)
    out = tmp_path / "smollm2-f16.gguf"
    summary = convert(converter.ensure(), smollm2_dir, out, "f16")
    assert summary["pre_tokenizer_note"] is None  # llama.cpp's own hash table knows it
    assert gguf.GGUFReader(out).get_field("tokenizer.ggml.pre").contents() == "smollm"
    for text in (read_eval_text(None), HARD_TEXT):
        assert tokenize(out, text) == _hf(ref.tokenizer, text)
    # A blank line then an indented version number (Python's LICENSE.txt): llama.cpp's smollm
    # pre-tokenizer splits the whitespace run before the digit differently from HF. Reported:
    from edgerun.exporters.gguf.runtime import tokenizer_parity

    text = "Is it GPL compatible? (1)\n\n    0.9.0 thru 1.2 and 2.0\n"
    parity = tokenizer_parity(out, ref.tokenizer, text, "license snippet")
    assert not parity["identical"] and parity["llama_cpp_tokens"] != parity["hf_tokens"]
    first = parity["first_difference"]
    assert first["hf"] != first["llama_cpp"] and "\n\n    0.9.0" in first["text"]


def test_parity_reports_the_first_difference(converted, monkeypatch):
    from edgerun.exporters.gguf import runtime

    _, tokenizer, gguf_path = converted
    text = read_eval_text(None)[:400]
    same = runtime.tokenizer_parity(gguf_path, tokenizer, text, "eval")
    assert same["identical"] and same["hf_tokens"] == same["llama_cpp_tokens"] > 0
    real = runtime.tokenize

    def one_token_split(path, text, special=False):
        ids = real(path, text, special)
        return ids[:5] + [ids[5], ids[5]] + ids[6:]  # as if llama.cpp split token 5 in two

    monkeypatch.setattr(runtime, "tokenize", one_token_split)
    differs = runtime.tokenizer_parity(gguf_path, tokenizer, text, "eval")
    assert not differs["identical"]
    assert differs["llama_cpp_tokens"] == differs["hf_tokens"] + 1
    first = differs["first_difference"]
    assert first["token_index"] == 6
    assert first["text"] and first["text"] in text
