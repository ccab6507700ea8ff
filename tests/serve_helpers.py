"""Shared by the serve tests: export the tiny artifact, run a server in a thread on a free
loopback port, read the address a `edgerun serve` subprocess announces."""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.runtime_helpers import export_artifact


def export_onnx(checkpoint: Path, out: Path) -> Path:
    """The onnx-fp32 artifact of `checkpoint` (optimum builder, no speed probe)."""
    from edgerun.exporters.formats import ExportOptions

    known = {f.name for f in dataclasses.fields(ExportOptions)}
    options = {k: v for k, v in {"builder": "optimum", "probe": False}.items() if k in known}
    return export_artifact(checkpoint, "onnx-fp32", out, **options)


@contextlib.contextmanager
def running(srv: Any) -> Iterator[str]:
    """Run the uvicorn server `srv` (from make_server) in a thread on a free 127.0.0.1 port;
    yield its base URL; stop it, join the slots' worker threads and close the models."""
    from edgerun.serve.server import bind

    sock = bind("127.0.0.1", 0)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert srv.started
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        srv.should_exit = True
        thread.join(timeout=15)
        sock.close()
        for slot in srv.state.slots.values():
            slot.shutdown()  # joins the worker thread, closes the model
        assert not thread.is_alive()


def read_address(proc: subprocess.Popen[str], timeout: float) -> str:
    """The first stderr line of `proc` that names the address (at most 20 lines, `timeout` s)."""
    out: list[str] = []

    def read() -> None:
        for _ in range(20):
            line = proc.stderr.readline() if proc.stderr else ""
            if not line or "http://" in line:
                out.append(line)
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    assert out and out[0], f"no address from the server in {timeout} s"
    return out[0]
