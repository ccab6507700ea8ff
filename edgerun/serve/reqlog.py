"""The request log: one line per generation request (id, model, tokens, TTFT, tok/s, status),
as text or JSON, on the logger "edgerun.serve.requests" (`edgerun serve --log-format`)."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

LOGGER = "edgerun.serve.requests"
FORMATS = ("text", "json")
log = logging.getLogger(LOGGER)


def fields(
    request_id: str, model: str | None, status: int, outcome: Any = None, user: str | None = None
) -> dict[str, Any]:
    """The line's fields: counts and timings from `outcome` (engine.Outcome; None when the
    request failed before generating); finish is the OpenAI finish_reason or 'cancelled'."""
    stats = outcome.stats if outcome is not None else {}
    ttft, rate = stats.get("ttft_s"), stats.get("decode_tok_s")
    finish = None
    if outcome is not None:
        finish = outcome.finish_reason or "cancelled"
    return {
        "id": request_id,
        "model": model,
        "status": status,
        "prompt_tokens": outcome.prompt_tokens if outcome is not None else 0,
        "cached_tokens": stats.get("cached_tokens", 0),
        "output_tokens": outcome.completion_tokens if outcome is not None else 0,
        "ttft_ms": round(ttft * 1000, 1) if ttft is not None else None,
        "tok_s": round(rate, 1) if rate is not None else None,
        "finish": finish,
        "user": user,
    }


def format_line(record: dict[str, Any], style: str) -> str:
    """One line: JSON, or `key=value` pairs with absent values as '-' (text)."""
    if style == "json":
        return json.dumps(record, ensure_ascii=True)
    # repr-quoted strings keep a client's user id on one line, whatever it holds
    parts = [
        f"{k}={'-' if v is None else (repr(v) if k == 'user' else v)}" for k, v in record.items()
    ]
    return " ".join(parts)


def write(record: dict[str, Any], style: str) -> None:
    """Log `record` as one line in `style` ("text" | "json")."""
    log.info(format_line(record, style))


def install(stream: Any = None) -> logging.Handler:
    """Send the request log to `stream` (stderr by default) as bare lines; returns the handler
    (remove it from logging.getLogger(LOGGER) when done)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    return handler
