"""Per-token cost of a grammar mask on SmolLM2's 49,152-token vocabulary, for three maintained
constrained-decoding libraries: llguidance, outlines-core and xgrammar.

    python -m benchmarks.constrain_masks [--reps 5] [--out FILE]

For each schema of benchmarks.structured_cases: compile it (timed), then walk the tokens of a
valid instance (compact JSON, then end of sequence) and time per step what a decode loop adds:
compute the next-token bitmask, apply it to a logits vector (one numpy routine for all three, so
the libraries differ only in the mask), and advance the matcher by the token. Medians over steps
and reps; one process, libraries interleaved per schema.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import RESULTS
from benchmarks.machine import describe
from benchmarks.structured_cases import INSTANCES, SCHEMAS
from edgerun.text.constrain import apply_bitmask as apply_mask


class Llguidance:
    name = "llguidance"

    def __init__(self, tokenizer_json: str, vocab: int, eos: int) -> None:
        import llguidance

        self.lib = llguidance
        self.tok = llguidance.LLTokenizer(tokenizer_json, n_vocab=vocab, eos_token=eos)
        self.mask = np.zeros((vocab + 31) // 32, np.int32)

    def compile(self, schema: dict[str, Any]) -> Any:
        grammar = self.lib.LLMatcher.grammar_from_json_schema(schema)
        matcher = self.lib.LLMatcher(self.tok, grammar)
        assert not matcher.is_error(), matcher.get_error()
        return matcher

    def step(self, matcher: Any, logits: np.ndarray, token: int) -> None:
        matcher.unsafe_compute_mask_ptr(self.mask.ctypes.data, self.mask.nbytes)
        masked = apply_mask(logits, self.mask)
        assert masked[token] > -np.inf
        assert matcher.consume_token(token), matcher.get_error()


class OutlinesCore:
    name = "outlines-core"

    def __init__(self, tokenizer_json: str, vocab: int, eos: int) -> None:
        import outlines_core as oc

        self.oc = oc
        self.vocabulary = oc.Vocabulary(eos, _byte_vocab(tokenizer_json, eos))
        self.mask = np.zeros((vocab + 31) // 32, np.int32)

    def compile(self, schema: dict[str, Any]) -> Any:
        regex = self.oc.json_schema.build_regex_from_schema(json.dumps(schema))
        return self.oc.Guide(self.oc.Index(regex, self.vocabulary))

    def step(self, guide: Any, logits: np.ndarray, token: int) -> None:
        guide.write_mask_into(self.mask.ctypes.data, self.mask.size, 4)
        masked = apply_mask(logits, self.mask)
        assert masked[token] > -np.inf
        if not guide.is_finished():
            guide.advance(token)


class Xgrammar:
    name = "xgrammar"

    def __init__(self, tokenizer_file: Path, vocab: int, eos: int) -> None:
        import xgrammar as xgr
        from transformers import PreTrainedTokenizerFast

        hf = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file))
        info = xgr.TokenizerInfo.from_huggingface(hf, vocab_size=vocab, stop_token_ids=[eos])
        self.xgr, self.compiler = xgr, xgr.GrammarCompiler(info)
        self.mask = xgr.allocate_token_bitmask(1, vocab)

    def compile(self, schema: dict[str, Any]) -> Any:
        compiled = self.compiler.compile_json_schema(json.dumps(schema))
        return self.xgr.GrammarMatcher(compiled)

    def step(self, matcher: Any, logits: np.ndarray, token: int) -> None:
        matcher.fill_next_token_bitmask(self.mask)
        masked = apply_mask(logits, self.mask.numpy()[0])
        assert masked[token] > -np.inf
        if not matcher.is_terminated():
            assert matcher.accept_token(token)


def _byte_vocab(tokenizer_json: str, eos: int) -> dict[bytes, list[int]]:
    """Token id lists by the bytes each token stands for (byte-level BPE's alphabet undone)."""
    spec = json.loads(tokenizer_json)
    alphabet = _bytes_to_unicode()
    decoder = {c: b for b, c in alphabet.items()}
    out: dict[bytes, list[int]] = {}
    specials = {t["id"] for t in spec.get("added_tokens", [])}
    for text, tid in spec["model"]["vocab"].items():
        if tid == eos or tid in specials:
            continue
        out.setdefault(bytes(decoder[c] for c in text), []).append(tid)
    return out


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars, n = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(keep, chars, strict=True)}


def measure(lib: Any, encode: Any, eos: int, vocab: int, reps: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(vocab).astype(np.float32)
    rows = {}
    for name, schema, _ in SCHEMAS:
        tokens = [*encode(json.dumps(INSTANCES[name], separators=(",", ":"))), eos]
        compile_s, steps = [], []
        for _ in range(reps):
            start = time.perf_counter()
            matcher = lib.compile(schema)
            compile_s.append(time.perf_counter() - start)
            for token in tokens:
                start = time.perf_counter()
                lib.step(matcher, logits, token)
                steps.append(time.perf_counter() - start)
        rows[name] = {
            "tokens": len(tokens),
            "compile_ms_median": round(1e3 * statistics.median(compile_s), 3),
            "step_us_median": round(1e6 * statistics.median(steps), 1),
            "step_us_mean": round(1e6 * statistics.fmean(steps), 1),
            "step_us_p90": round(1e6 * float(np.percentile(steps, 90)), 1),
        }
    every = [r["step_us_median"] for r in rows.values()]
    return {"schemas": rows, "step_us_median_of_medians": statistics.median(every)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    from tokenizers import Tokenizer

    from edgerun.sources.resolve import resolve

    checkpoint = resolve(args.model).path
    tok_file = checkpoint / "tokenizer.json"
    tok = Tokenizer.from_file(str(tok_file))
    config = json.loads((checkpoint / "config.json").read_text())
    vocab, eos = int(config["vocab_size"]), int(config["eos_token_id"])

    def encode(text: str) -> list[int]:
        return list(tok.encode(text, add_special_tokens=False).ids)

    results: dict[str, Any] = {}
    makers = {
        "llguidance": lambda: Llguidance(tok.to_str(), vocab, eos),
        "outlines-core": lambda: OutlinesCore(tok.to_str(), vocab, eos),
        "xgrammar": lambda: Xgrammar(tok_file, vocab, eos),
    }
    for name, make in makers.items():
        try:
            start = time.perf_counter()
            lib = make()
            setup_s = time.perf_counter() - start
        except ImportError as exc:
            results[name] = {"skipped": f"not installed: {exc}"}
            continue
        results[name] = {"tokenizer_setup_s": round(setup_s, 3)}
        results[name].update(measure(lib, encode, eos, vocab, args.reps))
        print(name, json.dumps(results[name]["step_us_median_of_medians"]))
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or RESULTS / f"constrain-masks-{stamp}.json"
    payload = {"model": args.model, "vocab": vocab, "reps": args.reps, "machine": describe()}
    payload["libraries"] = results
    out.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
