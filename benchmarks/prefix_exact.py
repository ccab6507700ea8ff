"""Whether a prompt cache can reuse KV positions exactly (issue 27): the greedy tokens and logits
of 12 decode steps after a ~1k-token chat history computed in one batch (a cold request), against
the same history restored from a snapshot cut at several positions with the rest fed in a batch
(what the prompt cache does), and against the previous reply decoded a token at a time (what it
did before it kept prefill positions only).

    .venv/bin/python -m benchmarks.prefix_exact ART [--splits 940,939,943,512]

Prints max |logit difference| per split; 0.0 means bit-identical.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from benchmarks.serve_prefix import system_prompt

REPLY = " The text is about a lighthouse keeper and the records she kept of ships that passed."


def _follow(backend: Any, logits: np.ndarray, steps: int = 12) -> tuple[list[int], np.ndarray]:
    tokens, rows = [], []
    for _ in range(steps):
        rows.append(np.array(logits, np.float32))
        tokens.append(int(rows[-1].argmax()))
        logits = backend.decode(tokens[-1])
    return tokens, np.stack(rows)


def main(argv: list[str] | None = None) -> None:
    import edgerun

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact")
    parser.add_argument("--splits", default="")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    with edgerun.load(args.artifact, threads=args.threads, prompt_cache_mb=0) as model:
        tok, backend = model.tokenizer, model._backend
        assert backend is not None
        system = {"role": "system", "content": system_prompt(1000)}
        ask = {"role": "user", "content": "Summarise the text above in one sentence."}
        prompt = tok.encode_chat([system, ask])
        reply = tok.encode(REPLY, add_special_tokens=False)
        turn = "<|im_end|>\n<|im_start|>user\nMore?<|im_end|>\n<|im_start|>assistant\n"
        history = prompt + reply + tok.encode(turn, add_special_tokens=False)
        total = len(history) + 20
        cold_tokens, cold = _follow(backend, backend.prefill(history, total))
        print(model.info.backend, "prompt", len(prompt), "history", len(history))
        splits = [int(s) for s in args.splits.split(",") if s] or [len(prompt), len(prompt) - 1]
        for split in splits:
            backend.prefill(history[:split], total)
            taken = backend.snapshot()
            assert taken is not None
            backend.prefill([1, 2, 3, 4, 5], total)  # another conversation in between
            tokens, warm = _follow(backend, backend.resume(taken[0], split, history, total))
            diff = float(np.abs(warm - cold).max())
            print(f"split {split}: same tokens {tokens == cold_tokens}, max |diff| {diff}")
        backend.prefill(prompt, total)
        for token in reply[:-1]:
            backend.decode(token)
        taken = backend.snapshot()
        assert taken is not None
        keep = len(prompt) + len(reply) - 1
        tokens, warm = _follow(backend, backend.resume(taken[0], keep, history, total))
        diff = float(np.abs(warm - cold).max())
        print(
            f"reply decoded one token at a time: same tokens {tokens == cold_tokens}, max |diff| {diff}"
        )


if __name__ == "__main__":
    main()
