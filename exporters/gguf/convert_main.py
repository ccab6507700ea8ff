"""Subprocess entry: run llama.cpp's convert_hf_to_gguf.py from an extracted converter directory.

    python -m edgerun.exporters.gguf.convert_main CONVERTER_DIR MODEL_DIR OUTFILE OUTTYPE

Two edgerun additions, made by wrapping methods, not by editing llama.cpp's files:

- when llama.cpp does not recognise a BPE pre-tokenizer by its hash (any tokenizer trained after
  the converter was released, every tiny test tokenizer), edgerun's shape-based detection
  (edgerun.exporters.gguf.pretokenizers) names it, or refuses it with a one-line reason;
- when a SentencePiece family's checkpoint has tokenizer.json but no tokenizer.model, the
  vocabulary is built from tokenizer.json (edgerun.exporters.gguf.spm_vocab).

And the converter runs inside edgerun.sources.remote_code.no_remote_code: where it asks transformers to
trust a model's own code (some tokenizers and architectures do), the conversion fails instead.
The last stderr line of a failure is `edgerun-error: <message> | <hint>` for the parent to report.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

ERROR_PREFIX = "edgerun-error: "
PRE_NOTE_PREFIX = "edgerun-pre-tokenizer: "
VOCAB_NOTE_PREFIX = "edgerun-vocabulary: "
# Converter classes whose own set_vocab reads tokenizer.model (not through
# _create_vocab_sentencepiece): module of llama.cpp's `conversion` package -> class.
SPM_SET_VOCAB = {"phi": "Phi3MiniModel"}


def _wrap_pre_tokenizer_detection(text_model: Any) -> None:
    original = text_model.get_vocab_base_pre

    def get_vocab_base_pre(self: Any, tokenizer: Any) -> str:
        try:
            name: str = original(self, tokenizer)
            return name
        except NotImplementedError:
            from edgerun.exporters.gguf.pretokenizers import pre_tokenizer_name

            name = pre_tokenizer_name(tokenizer, Path(self.dir_model))
            print(f"{PRE_NOTE_PREFIX}{name} (by the pre-tokenizer's shape)", file=sys.stderr)
            return name

    text_model.get_vocab_base_pre = get_vocab_base_pre


def _wrap_sentencepiece_vocab(text_model: Any) -> None:
    original = text_model._create_vocab_sentencepiece

    def _create_vocab_sentencepiece(self: Any) -> Any:
        model_dir = Path(self.dir_model)
        if (model_dir / "tokenizer.model").is_file() or not (
            model_dir / "tokenizer.json"
        ).is_file():
            return original(self)
        from edgerun.core.errors import EdgerunError
        from edgerun.exporters.gguf.spm_vocab import read_tokenizer_json, sentencepiece_vocab

        size = self.find_hparam(["vocab_size_per_layer_input", "vocab_size"], optional=True)
        try:
            data = read_tokenizer_json(model_dir)
            vocab = sentencepiece_vocab(data, size, self.does_token_look_special)
        except EdgerunError as exc:  # as the original: families with a fallback (llama) go on
            raise FileNotFoundError(f"{exc.message}, and there is no tokenizer.model") from exc
        print(f"{VOCAB_NOTE_PREFIX}SentencePiece vocabulary from tokenizer.json", file=sys.stderr)
        return vocab

    text_model._create_vocab_sentencepiece = _create_vocab_sentencepiece


def _route_set_vocab(model_class: Any) -> None:
    """A class whose set_vocab needs tokenizer.model builds its vocabulary through
    _set_vocab_sentencepiece (so from tokenizer.json) when there is none."""
    original = model_class.set_vocab

    def set_vocab(self: Any) -> Any:
        model_dir = Path(self.dir_model)
        try:
            return original(self)
        except (ValueError, FileNotFoundError):
            if (model_dir / "tokenizer.model").is_file():
                raise
            return self._set_vocab_sentencepiece()

    model_class.set_vocab = set_vocab


def main(argv: list[str]) -> int:
    converter_dir, model_dir, outfile, outtype = argv
    if "gguf" in sys.modules:  # the installed gguf-py would shadow the converter's own
        print(
            f"{ERROR_PREFIX}gguf imported before the converter | a bug in edgerun", file=sys.stderr
        )
        return 3
    sys.path.insert(0, converter_dir)  # the script puts its gguf-py right after this
    from edgerun.core.errors import EdgerunError
    from edgerun.sources.remote_code import no_remote_code

    try:
        import convert_hf_to_gguf
        from conversion import base

        _wrap_pre_tokenizer_detection(base.TextModel)
        _wrap_sentencepiece_vocab(base.TextModel)
        for module, name in SPM_SET_VOCAB.items():
            _route_set_vocab(getattr(importlib.import_module(f"conversion.{module}"), name))
        sys.argv = [
            "convert_hf_to_gguf.py", model_dir, "--outfile", outfile, "--outtype", outtype,
        ]  # fmt: skip
        with no_remote_code():
            convert_hf_to_gguf.main()
    except EdgerunError as exc:
        print(f"{ERROR_PREFIX}{exc.message} | {exc.hint}", file=sys.stderr)
        return 2
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except Exception as exc:  # llama.cpp's errors: one line for the parent
        text = str(exc).strip().splitlines()
        print(f"{ERROR_PREFIX}{type(exc).__name__}: {text[0] if text else ''}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
