"""serve(): load the artifacts, build the app, run uvicorn; a signal drains before exiting."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from edgerun.errors import EdgerunError
from edgerun.model import Model, load
from edgerun.serve.app import ServeState, build_app
from edgerun.serve.engine import Metrics, Slot
from edgerun.untrusted import is_loopback

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
    loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
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
) -> DrainingServer:
    """A uvicorn server (not started; run it with `.run(sockets=[bind(host, port)])`).

    On SIGINT/SIGTERM (or `.stop()`) it stops accepting connections, answers queued requests
    503, lets running generations finish (at most `drain_s` seconds), then returns.
    """
    if max_queue < 0:
        raise EdgerunError(f"--max-queue must be 0 or more, got {max_queue}", "pass --max-queue 8")
    metrics = Metrics()
    slots = {name: Slot(name, model, max_queue, metrics) for name, model in models.items()}
    state = ServeState(slots, metrics, api_key, max_body, drain_s)
    config = uvicorn.Config(
        build_app(state),
        log_level="warning",
        timeout_graceful_shutdown=int(drain_s) + 2,  # after the streams' own grace period
        lifespan="off",
    )
    server = DrainingServer(config)
    server.state = state
    return server


def serve(
    artifacts: Sequence[str],
    host: str = "127.0.0.1",
    port: int = 8000,
    profile: str | None = None,
    api_key: str | None = None,
    max_queue: int = 8,
    context: int | None = None,
    drain_s: float = 30.0,
    announce: Callable[[str], None] = log.warning,
    **load_options: Any,
) -> None:
    """Serve `artifacts` (PATH or ALIAS=PATH) on host:port until SIGINT/SIGTERM, then drain.

    `load_options` go to edgerun.load (threads, backend, ...). Raises EdgerunError when an
    artifact does not load or the address cannot be bound.
    """
    paths = parse_artifacts(artifacts)
    if not is_loopback(host) and not api_key:
        announce(
            f"warning: serving on {host} without --api-key: anyone who can reach it can use it"
        )
    sock = bind(host, port)  # before loading: a busy port fails at once
    with (
        contextlib.closing(sock),
        loaded(paths, profile=profile, context=context, **load_options) as models,
    ):
        server = make_server(models, api_key, max_queue, drain_s=drain_s)
        where = f"[{host}]" if ":" in host else host
        announce(
            f"edgerun serve: {', '.join(models)} on http://{where}:{sock.getsockname()[1]}/v1"
            " (Ctrl-C to stop)"
        )
        try:
            server.run(sockets=[sock])
        finally:
            for slot in server.state.slots.values():
                slot.shutdown()
