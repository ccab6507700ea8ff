"""`edgerun serve ARTIFACT...`: an OpenAI-compatible HTTP server (the `serve` extra)."""

from __future__ import annotations

import click

from edgerun.cli.options import prompt_cache_option, speculative_option


@click.command()
@click.argument("artifacts", nargs=-1, required=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8000, show_default=True, help="Port to bind (0: any free one).")
@click.option(
    "--profile",
    envvar="EDGERUN_PROFILE",
    help="Device profile id or TOML file (default: auto-detect).",
)
@click.option(
    "--api-key",
    envvar="EDGERUN_API_KEY",
    default=None,
    help="Require 'Authorization: Bearer KEY' (env EDGERUN_API_KEY).",
)
@click.option(
    "--max-queue",
    default=8,
    show_default=True,
    help="Requests that may wait per model; more get 429 at once.",
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    metavar="NAME[:PORT]",
    help="Also answer requests for this Host name (repeatable; '*': any). Bound to loopback,"
    " only localhost, 127.0.0.1 and [::1] are answered; on another address, any name.",
)
@click.option(
    "--max-connections",
    default=256,
    show_default=True,
    help="Open connections at most (idle ones are closed first when it is reached).",
)
@click.option("--context", type=int, default=None, help="Context length (default: the model's).")
@click.option("--threads", type=int, default=None, help="Threads (default: the profile's).")
@click.option("--backend", default=None, help="Force a backend: onnxruntime, genai, llamacpp.")
@prompt_cache_option
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="The request log on stderr: one line per request, key=value text or JSON.",
)
@click.option(
    "--drain-timeout",
    default=30.0,
    show_default=True,
    help="Seconds running generations get to finish on Ctrl-C / SIGTERM.",
)
@speculative_option
def serve(
    artifacts: tuple[str, ...],
    host: str,
    port: int,
    profile: str | None,
    api_key: str | None,
    max_queue: int,
    allowed_hosts: tuple[str, ...],
    max_connections: int,
    context: int | None,
    threads: int | None,
    backend: str | None,
    prompt_cache_mb: float | None,
    log_format: str,
    drain_timeout: float,
    speculative: str,
) -> None:
    """Serve ARTIFACTS over the OpenAI API: /v1/models, /v1/completions, /v1/chat/completions.

    Each ARTIFACT is a directory or bare .gguf / .onnx file, served under its name, or
    ALIAS=PATH; a request's "model" picks one. Each model runs one generation at a time, the
    rest wait in a bounded queue. A prompt that shares a prefix with an earlier one starts
    from its cached KV state. GET /health and GET /metrics (Prometheus) are also served.
    """
    from edgerun.core.errors import require

    for module in ("uvicorn", "starlette", "sse_starlette", "prometheus_client"):
        require(module, "serve")
    from edgerun.serve.server import serve as run_server

    try:
        run_server(
            artifacts,
            host=host,
            port=port,
            profile=profile,
            api_key=api_key,
            max_queue=max_queue,
            context=context,
            drain_s=drain_timeout,
            allowed_hosts=allowed_hosts,
            max_connections=max_connections,
            announce=lambda line: click.echo(line, err=True),
            threads=threads,
            backend=backend,
            speculative=speculative,
            prompt_cache_mb=prompt_cache_mb,
            log_format=log_format,
        )
    except KeyboardInterrupt:
        # uvicorn has already drained; it re-raises the signal only so the caller can see it.
        click.echo("edgerun serve: stopped", err=True)
