"""Ship artifacts from the lab host to devices, content-addressed by their manifest's sha256.

The host asks the device whether it has the artifact; only if not, it opens a transfer, sends
every file in chunks of CHUNK_BYTES (read one at a time: never the whole artifact in memory),
straight to that worker (Dask scatter), and asks the device to verify and store it
(edgerun.lab.store). The device refuses a tampered artifact with the reason.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgerun.core.errors import EdgerunError

CHUNK_BYTES = 4 << 20

#: Waits for one Dask future on one device, raising on disconnect, timeout or cancel.
Await = Callable[[Any], Any]


@dataclass(frozen=True)
class LocalArtifact:
    """An artifact on the lab host: its id (manifest sha256), manifest bytes and what the
    results record about it (edgerun.bench.harness.describe_artifact)."""

    path: Path
    artifact_id: str
    manifest: bytes
    files: list[dict[str, Any]]
    info: dict[str, Any]


def local_artifact(path: Path) -> LocalArtifact:
    """Read an artifact directory on the lab host; EdgerunError if it is not one. Bare .gguf /
    .onnx files have no manifest to address them by and are refused."""
    from edgerun.bench.harness import describe_artifact
    from edgerun.core.manifest import MANIFEST_NAME, read_manifest

    path = Path(path)
    if not path.exists():
        raise EdgerunError(f"{path} does not exist", "pass artifact directories from `export`")
    if not path.is_dir():
        raise EdgerunError(
            f"{path} is not an artifact directory (lab mode ships artifacts by their manifest)",
            "export it with `edgerun export` first",
        )
    manifest = read_manifest(path)
    raw = (path / MANIFEST_NAME).read_bytes()
    return LocalArtifact(
        path=path,
        artifact_id=hashlib.sha256(raw).hexdigest(),
        manifest=raw,
        files=list(manifest.get("files", [])),
        info=describe_artifact(path),
    )


def _chunks(path: Path) -> Iterator[tuple[int, bytes]]:
    offset = 0
    with open(path, "rb") as fh:
        while True:
            data = fh.read(CHUNK_BYTES)
            if not data and offset:
                return
            yield offset, data
            offset += len(data)
            if not data:  # an empty file: one empty chunk creates it
                return


def ship(client: Any, address: str, artifact: LocalArtifact, wait: Await) -> int:
    """Make sure the device at `address` has `artifact`; return the bytes sent (0 when it
    already had it). Raises EdgerunError when the device refuses it."""
    from edgerun.lab import store
    from edgerun.lab.guard import unwrap
    from edgerun.lab.remote import call

    def on_device(fn: Callable[..., Any], *args: Any) -> Any:
        answer = wait(client.submit(call, fn, *args, workers=[address], pure=False))
        return unwrap(answer, f"the device's answer to {fn.__name__}")

    if on_device(store.artifact_path, artifact.artifact_id) is not None:
        return 0
    token = on_device(store.begin, artifact.artifact_id, artifact.manifest)
    if not isinstance(token, str):
        raise EdgerunError(f"the device answered a transfer token of type {type(token).__name__}")
    sent = 0
    try:
        for entry in artifact.files:
            for offset, data in _chunks(artifact.path / entry["name"]):
                [remote] = client.scatter([data], workers=[address], direct=True, hash=False)
                fut = client.submit(
                    call,
                    store.write_chunk,
                    artifact.artifact_id,
                    token,
                    entry["name"],
                    offset,
                    remote,
                    workers=[address],
                    pure=False,
                )
                written = unwrap(wait(fut), "the device's answer to write_chunk")
                if written != len(data):
                    raise EdgerunError(f"the device wrote {written!r:.20} of {len(data)} bytes")
                sent += len(data)
                del remote, fut  # the worker drops the chunk once nothing refers to it
        on_device(store.finish, artifact.artifact_id, token)
    except BaseException:
        from distributed import fire_and_forget

        # A device that is gone has its leftovers swept when it restarts.
        with contextlib.suppress(Exception):
            fire_and_forget(
                client.submit(
                    store.abort, artifact.artifact_id, token, workers=[address], pure=False
                )
            )
        raise
    return sent
