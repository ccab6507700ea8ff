"""serve(): load the artifacts, build the app, run uvicorn; a signal drains before exiting."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import socket
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from edgerun.core.errors import EdgerunError
from edgerun.core.untrusted import is_loopback
from edgerun.runtime.model import Model, load
from edgerun.serve import reqlog
from edgerun.serve.app import ServeState, build_app
from edgerun.serve.engine import Metrics, Slot
from edgerun.serve.guard import (
    ACCEPT_BATCH,
    LOOPBACK_HOSTS,
    Limits,
    OncePerMinute,
    connection_guard,
    quiet_accept_errors,
)

log = logging.getLogger(__name__)


def parse_artifacts(specs: Sequence[str]) -> dict[str, Path]:
    """`PATH` or `ALIAS=PATH` -> {model id: path}; the id of a bare PATH is its directory (or
    file) name. Raises EdgerunError on a duplicate id."""
    out: dict[str, Path] = {}
    for spec in specs:
        alias, sep, rest = spec.partition("=")
        if sep and alias and not Path(spec).exists():
            name, path = alias, Path(rest)
        else:
            path = Path(spec)
            name = path.resolve().name or str(path)
        if name in out:
            raise EdgerunError(
                f"two artifacts are both served as '{name}'", "give one an alias: ALIAS=PATH"
            )
        out[name] = path
    return out


@contextlib.contextmanager
def loaded(paths: dict[str, Path], **load_options: Any) -> Iterator[dict[str, Model]]:
    """Load every artifact; close them all on the way out, also when one fails to load."""
    models: dict[str, Model] = {}
    try:
        for name, path in paths.items():
            models[name] = load(path, **load_options)
        yield models
    finally:
        for model in models.values():
            model.close()


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (0: any free port); EdgerunError when it cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise EdgerunError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            "pick another --port or --host",
        ) from exc
    sock.set_inheritable(True)
    return sock


class DrainingServer(uvicorn.Server):
    """uvicorn.Server that tells the slots to refuse queued work as soon as it starts stopping."""

    state: ServeState
    warnings: OncePerMinute
    loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.loop.set_exception_handler(quiet_accept_errors(self.warnings))
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit and self.loop is not None:
            self.loop.call_soon_threadsafe(self.state.close)
        super().handle_exit(sig, frame)

    def stop(self) -> None:
        """Drain and stop, from any thread: what SIGTERM does."""
        self.handle_exit(signal.SIGTERM, None)


def make_server(
    models: dict[str, Model],
    api_key: str | None = None,
    max_queue: int = 8,
    max_body: int = 1 << 20,
    drain_s: float = 30.0,
    allowed_hosts: Sequence[str] = LOOPBACK_HOSTS,
    limits: Limits | None = None,
    log_format: str = "text",
) -> DrainingServer:
    """A uvicorn server (not started; run it with `.run(sockets=[bind(host, port)])`).

    It answers only requests whose Host is in `allowed_hosts` ("*": any), keeps at most
    `limits.max_connections` connections (closing idle ones first) and closes a client that
    is slower than `limits`' header and body deadlines. On SIGINT/SIGTERM (or `.stop()`) it
    stops accepting connections, answers queued requests 503, lets running generations finish
    (at most `drain_s` seconds), then returns. Each generation request is logged as one line
    in `log_format` (edgerun.serve.reqlog). Raises EdgerunError on a bad setting.
    """
    if log_format not in reqlog.FORMATS:
        raise EdgerunError(
            f"unknown log format '{log_format}'", f"use one of {', '.join(reqlog.FORMATS)}"
        )
    if max_queue < 0:
        raise EdgerunError(f"--max-queue must be 0 or more, got {max_queue}", "pass --max-queue 8")
    check_api_key(api_key)
    limits = limits or Limits()
    if limits.max_connections < 1:
        raise EdgerunError(
            f"--max-connections must be 1 or more, got {limits.max_connections}",
            "pass --max-connections 256",
        )
    metrics, warnings = Metrics(), OncePerMinute()
    slots = {name: Slot(name, model, max_queue, metrics) for name, model in models.items()}
    state = ServeState(
        slots, metrics, api_key, max_body, drain_s, limits.body_timeout_s, log_format
    )
    config = uvicorn.Config(
        build_app(state, allowed_hosts),
        http=connection_guard(limits, warnings),
        backlog=ACCEPT_BATCH,
        log_level="warning",
        timeout_graceful_shutdown=int(drain_s) + 2,  # after the streams' own grace period
        lifespan="off",
    )
    server = DrainingServer(config)
    server.state, server.warnings = state, warnings
    return server


def check_api_key(key: str | None) -> None:
    """EdgerunError unless `key` is None or visible ASCII (what a Bearer header can carry)."""
    if key is not None and not re.fullmatch(r"[!-~]+", key):
        raise EdgerunError(
            "the API key is empty or holds spaces or characters outside visible ASCII",
            "pass a non-empty --api-key of visible ASCII characters, or none",
        )


def allowed_hosts_for(host: str, extra: Sequence[str] = ()) -> list[str]:
    """The Host names a server bound to `host` answers: the loopback names when it is bound to
    loopback, else any ("*"); plus `extra`."""
    if is_loopback(host):
        return [*LOOPBACK_HOSTS, *extra]
    return list(extra) or ["*"]


def serve(
    artifacts: Sequence[str],
    host: str = "127.0.0.1",
    port: int = 8000,
    profile: str | None = None,
    api_key: str | None = None,
    max_queue: int = 8,
    context: int | None = None,
    drain_s: float = 30.0,
    allowed_hosts: Sequence[str] = (),
    max_connections: int = 256,
    announce: Callable[[str], None] = log.warning,
    log_format: str = "text",
    **load_options: Any,
) -> None:
    """Serve `artifacts` (PATH or ALIAS=PATH) on host:port until SIGINT/SIGTERM, then drain.

    `allowed_hosts` adds Host names to those a loopback server answers (a server on another
    address answers any, unless these are given). One line per generation request goes to
    stderr in `log_format` ("text" | "json"). `load_options` go to edgerun.load (threads,
    backend, prompt_cache_mb, ...). Raises EdgerunError when an artifact does not load, a setting is wrong or
    the address cannot be bound.
    """
    paths = parse_artifacts(artifacts)
    check_api_key(api_key)
    if not is_loopback(host) and not api_key:
        announce(
            f"warning: serving on {host} without --api-key: anyone who can reach it can use it"
        )
    sock = bind(host, port)  # before loading: a busy port fails at once
    with (
        contextlib.closing(sock),
        loaded(paths, profile=profile, context=context, **load_options) as models,
    ):
        server = make_server(
            models,
            api_key,
            max_queue,
            drain_s=drain_s,
            allowed_hosts=allowed_hosts_for(host, allowed_hosts),
            limits=Limits(max_connections=max_connections),
            log_format=log_format,
        )
        where = f"[{host}]" if ":" in host else host
        announce(
            f"edgerun serve: {', '.join(models)} on http://{where}:{sock.getsockname()[1]}/v1"
            " (Ctrl-C to stop)"
        )
        handler = reqlog.install()
        try:
            server.run(sockets=[sock])
        finally:
            logging.getLogger(reqlog.LOGGER).removeHandler(handler)
            for slot in server.state.slots.values():
                slot.shutdown()
