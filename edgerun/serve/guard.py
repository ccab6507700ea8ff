"""What keeps one client from taking `serve` from everyone: a connection limit that closes idle
connections first, request-header and request-body deadlines, a Host check against DNS
rebinding, and warnings said once a minute instead of once per connection."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
# asyncio accepts up to `backlog` connections per wake-up before any protocol runs; uvicorn's
# 2048 would let a burst pass any limit on open files.
ACCEPT_BATCH = 64
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


@dataclass(frozen=True)
class Limits:
    """Per-server bounds on connections and on how long a client may take to send a request."""

    max_connections: int = 256
    header_timeout_s: float = 10.0  # from connecting (or the last response) to the headers
    body_timeout_s: float = 30.0  # from the headers to the end of the body

    def effective_connections(self) -> int:
        """max_connections, lowered to what the open-file limit leaves: the files open now, one
        accept batch (accepted before any is counted) and a spare for the server's own."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return self.max_connections
        room = soft - _open_files() - ACCEPT_BATCH - 32
        return max(1, min(self.max_connections, room))


def _open_files() -> int:
    for listing in ("/proc/self/fd", "/dev/fd"):
        if os.path.isdir(listing):
            return len(os.listdir(listing))
    return 0


class OncePerMinute:
    """A warning said at most once per `quiet_s` per kind, with how often it was held back."""

    def __init__(self, quiet_s: float = 60.0) -> None:
        self.quiet_s = quiet_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warn(self, kind: str, message: str) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -self.quiet_s) < self.quiet_s:
            self._held[kind] = self._held.get(kind, 0) + 1
            return
        held = self._held.pop(kind, 0)
        self._last[kind] = now
        log.warning("%s%s", message, f" ({held} more since the last warning)" if held else "")


def connection_guard(limits: Limits, warnings: OncePerMinute) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol with the connection limit and the header deadline.

    At the limit, a new connection closes the oldest one still waiting for its request
    headers (a flood of idle sockets evicts itself); when every connection is busy with a
    request, the new one gets 503 and is closed.
    """
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    base: Any = AutoHTTPProtocol  # h11's or httptools' protocol, whichever uvicorn picks
    limit = limits.effective_connections()
    live: set[Any] = set()
    idle: dict[Any, None] = {}  # waiting for request headers, oldest first

    class Guarded(base):  # type: ignore[misc]
        app: Any  # the ASGI app, set by the base class

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._timer: asyncio.TimerHandle | None = None
            self._refused = False
            app: Any = self.app

            async def headers_in(scope: Any, receive: Any, send: Any) -> None:
                self._busy()
                await app(scope, receive, send)

            self.app = headers_in

        def connection_made(self, transport: Any) -> None:
            if len(live) >= limit and not _evict_oldest():
                self._refused = True
                warnings.warn("busy", f"edgerun serve: all {limit} connections are busy: refusing")
                transport.write(b"HTTP/1.1 503 Service Unavailable\r\n")
                transport.write(b"connection: close\r\ncontent-length: 0\r\n\r\n")
                transport.close()
                return
            if len(live) >= limit - 1:
                warnings.warn(
                    "flood",
                    f"edgerun serve: {limit} connections open (the limit): closing the idle ones,"
                    " oldest first; a client may be flooding the server",
                )
            super().connection_made(transport)
            live.add(self)
            self._idle()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._refused:
                return
            self._busy()
            live.discard(self)
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._idle()  # the next request's headers get the same deadline

        def _idle(self) -> None:
            idle[self] = None
            self._timer = self.loop.call_later(limits.header_timeout_s, self._drop)

        def _busy(self) -> None:
            idle.pop(self, None)
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _drop(self) -> None:
            self._busy()
            live.discard(self)
            self.transport.close()

    def _evict_oldest() -> bool:
        for oldest in idle:
            oldest._drop()
            return True
        return False

    return Guarded


def quiet_accept_errors(
    warnings: OncePerMinute,
) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
    """An event-loop exception handler: running out of file descriptors in accept() is said
    once a minute, not as one traceback per attempt."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in _OUT_OF_RESOURCES:
            warnings.warn("accept", f"edgerun serve: cannot accept connections: {exc.strerror}")
            return
        loop.default_exception_handler(context)

    return handle


async def read_within(read: Callable[[], Awaitable[bytes]], timeout_s: float) -> bytes:
    """`read()`, or ApiError 408 after `timeout_s` seconds."""
    from edgerun.serve.schema import ApiError

    try:
        return await asyncio.wait_for(read(), timeout_s)
    except asyncio.TimeoutError:
        raise ApiError(
            408, f"the request body did not arrive within {timeout_s:g} s", None, "request_timeout"
        ) from None


class HostCheck:
    """ASGI middleware: only the Host names in `allowed` (with no port or the server's own)
    reach the app, so a web page whose name resolves to 127.0.0.1 (DNS rebinding) cannot use
    a server that needs no key. "*" allows any name."""

    def __init__(self, app: Any, allowed: Sequence[str]) -> None:
        self.app = app
        self.allowed = None if "*" in allowed else frozenset(h.lower() for h in allowed)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.allowed is not None:
            host = dict(scope["headers"]).get(b"host")
            if host is not None and not self._allows(host.decode("latin-1").lower(), scope):
                from starlette.responses import JSONResponse

                from edgerun.serve.schema import ApiError

                error = ApiError(
                    400,
                    "this server does not answer to that Host name (start it with"
                    " --allowed-host NAME to allow one)",
                    None,
                    "invalid_host",
                )
                await JSONResponse(error.body(), status_code=400)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _allows(self, host: str, scope: Any) -> bool:
        assert self.allowed is not None
        if host in self.allowed:
            return True
        name, sep, port = host.rpartition(":")
        server = scope.get("server") or (None, None)
        return bool(sep) and name in self.allowed and port == str(server[1])
