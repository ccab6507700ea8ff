"""`edgerun run ARTIFACT [PROMPT]`: stream tokens to stdout, then one stats line on stderr; with
no PROMPT, an interactive chat (edgerun.runtime.conversation)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import click

from edgerun.cli.options import prompt_cache_option, speculative_option


def stats_line(info: Any, stats: Any) -> str:
    """backend, active providers, threads, profile, prefill and decode speed, TTFT, finish."""

    def rate(value: float | None) -> str:
        return f"{value:.1f} tok/s" if value is not None else "n/a"

    ttft = f"{stats.ttft_s * 1000:.0f} ms" if stats.ttft_s is not None else "n/a"
    cached = f" ({stats.cached_tokens} cached)" if getattr(stats, "cached_tokens", 0) else ""
    return (
        f"[{info.backend} {','.join(info.providers)} threads={info.threads}"
        f" profile={info.profile_id}] prompt {stats.prompt_tokens} tok{cached}, prefill"
        f" {rate(stats.prefill_tok_s)}; generated {stats.generated_tokens} tok, decode"
        f" {rate(stats.decode_tok_s)}; ttft {ttft}; finish {stats.finish_reason}"
        f"{_speculation(stats)}"
    )


def _speculation(stats: Any) -> str:
    """'; prompt-lookup drafts accepted 40/52 (77%)' when the generation made drafts."""
    if getattr(stats, "speculative", None) is None or not stats.draft_tokens:
        return ""
    rate = stats.acceptance_rate
    share = f" ({rate:.0%})" if rate is not None else ""
    return (
        f"; {stats.speculative} drafts accepted {stats.accepted_tokens}/{stats.draft_tokens}{share}"
    )


def _read_prompt(prompt: str) -> str:
    """The prompt text ("-": stdin), refused with one line unless it is valid UTF-8."""
    from edgerun.core.errors import EdgerunError

    where = "the prompt"
    try:
        if prompt == "-":
            where = "the prompt on stdin"
            return sys.stdin.buffer.read().decode("utf-8")
        prompt.encode("utf-8")  # undecodable argv bytes arrive as lone surrogates
        return prompt
    except UnicodeError as exc:
        raise EdgerunError(f"{where} is not valid UTF-8 text", "pass the prompt as UTF-8") from exc


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.argument("prompt", required=False)
@click.option(
    "--profile",
    envvar="EDGERUN_PROFILE",
    help="Device profile id or TOML file (default: auto-detect).",
)
@click.option("--max-tokens", "-n", default=128, show_default=True, help="Tokens to generate.")
@click.option("--temperature", "-t", default=0.0, show_default=True, help="0 is greedy.")
@click.option(
    "--top-k", default=0, show_default=True, help="Keep the k most likely tokens (0: all)."
)
@click.option("--top-p", default=1.0, show_default=True, help="Nucleus sampling mass (1: off).")
@click.option("--seed", type=int, default=None, help="Seed for reproducible sampling.")
@click.option("--stop", multiple=True, help="Stop string (repeatable); not printed.")
@click.option(
    "--chat", is_flag=True, help="Send the prompt as a user message through the chat template."
)
@click.option("--strict", is_flag=True, help="Fail instead of falling back to another provider.")
@click.option("--threads", type=int, default=None, help="Threads (default: the profile's).")
@click.option("--backend", default=None, help="Force a backend: onnxruntime, genai, llamacpp.")
@click.option("--context", type=int, default=None, help="Context length (default: the model's).")
@click.option(
    "--truncate",
    type=click.Choice(["left"]),
    default=None,
    help="Drop the oldest prompt tokens when too long.",
)
@click.option("--ignore-eos", is_flag=True, help="Generate exactly --max-tokens tokens.")
@click.option(
    "--verify", is_flag=True, help="Hash every file of the artifact first (default: a quick check)."
)
@speculative_option
@click.option("--system", default=None, help="System message (interactive chat and --chat).")
@prompt_cache_option
def run(
    artifact: Path,
    prompt: str | None,
    profile: str | None,
    max_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    seed: int | None,
    stop: tuple[str, ...],
    chat: bool,
    strict: bool,
    threads: int | None,
    backend: str | None,
    context: int | None,
    truncate: str | None,
    ignore_eos: bool,
    verify: bool,
    speculative: str,
    system: str | None,
    prompt_cache_mb: float | None,
) -> None:
    """Stream a completion of PROMPT from ARTIFACT, then one stats line on stderr.

    ARTIFACT is an artifact directory, an export directory of several formats (the one the
    device profile prefers runs, and stderr says why), or a bare .gguf / .onnx file; PROMPT "-"
    reads stdin. With no PROMPT, an interactive chat: one message per line, /reset forgets,
    /exit or Ctrl-D quits; each turn reuses the KV cache of the conversation so far. The
    backend and execution providers come from the device profile (auto-detected by default).
    """
    from edgerun.runtime.model import load

    text = None if prompt is None else _read_prompt(prompt)
    options: dict[str, Any] = dict(
        max_tokens=max_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        stop=list(stop) or None,
        ignore_eos=ignore_eos,
        truncate=truncate,
    )
    with load(
        artifact,
        profile,
        threads=threads,
        backend=backend,
        strict=strict,
        context=context,
        verify=verify,
        speculative=speculative,
        prompt_cache_mb=prompt_cache_mb,
    ) as model:
        if model.info.artifact_reason:
            click.echo(f"picked {model.info.artifact_reason}", err=True)
        if model.info.context_reason.startswith("sized"):
            click.echo(f"context {model.context_length}: {model.info.context_reason}", err=True)
        if text is None:
            _interactive(model, system, options)
            return
        if chat:
            head = [{"role": "system", "content": system}] if system else []
            chunks = model.chat([*head, {"role": "user", "content": text}], **options)
        else:
            chunks = model.generate(text, **options)
        for chunk in chunks:
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
        sys.stdout.write("\n")
        click.echo(stats_line(model.info, model.last_stats), err=True)


def _interactive(model: Any, system: str | None, options: dict[str, Any]) -> None:
    """The chat loop on stdin (a prompt on stderr when it is a terminal)."""
    from edgerun.runtime.conversation import Conversation

    options.pop("truncate")  # the conversation drops its oldest turns instead
    tty = sys.stdin.isatty()

    def lines() -> Any:
        while True:
            if tty:
                click.echo(">>> ", nl=False, err=True)
            line = sys.stdin.readline()
            if not line:
                return
            yield line

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    click.echo(f"chat with {model.info.artifact}: /reset forgets, /exit or Ctrl-D quits", err=True)
    chat_loop(
        Conversation(model, system), lines(), write, lambda s: click.echo(s, err=True), **options
    )


def chat_loop(
    conversation: Any,
    lines: Iterable[str],
    write: Callable[[str], None],
    note: Callable[[str], None],
    **options: Any,
) -> int:
    """Answer each line of `lines` (stripped; an empty one is skipped) through `conversation`,
    streaming replies to `write` and a status line per turn to `note`, until the lines end or
    one is /exit or /bye; /reset forgets the conversation. Returns the number of turns."""
    turns = 0
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        if line in ("/exit", "/bye"):
            break
        if line == "/reset":
            conversation.reset()
            note("(conversation forgotten)")
            continue
        for chunk in conversation.say(line, **options):
            write(chunk.text)
        write("\n")
        model = conversation.model
        note(stats_line(model.info, model.last_stats))
        turns += 1
    return turns
