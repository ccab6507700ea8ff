"""A device's content store of artifacts, addressed by the sha256 of their manifest.

Runs on the device (inside Dask tasks). Everything it receives is untrusted: the manifest is
size-bounded and checked by edgerun.core.manifest, every file name must stay inside the staging
directory, every chunk must fall inside the size the manifest declares, and the whole artifact
is hashed in 1 MiB reads against the manifest (edgerun.core.integrity) before the staging directory
is renamed to ``$EDGERUN_HOME/lab/store/<manifest sha256>``. A tampered artifact is refused with
the reason, and nothing of it stays in the store.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path
from typing import Any

from edgerun.core.errors import EdgerunError

MAX_MANIFEST_BYTES = 4 << 20
MAX_CHUNK_BYTES = 16 << 20
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_TOKEN = re.compile(r"^[0-9a-f]{16}$")
HINT = "re-export the artifact on the lab host, or check the copy there with `edgerun verify`"


def store_dir() -> Path:
    """$EDGERUN_HOME/lab/store, created on demand; leftovers of killed transfers swept."""
    from edgerun.core.home import cache_dir

    return cache_dir("lab/store")


def _digest(artifact_id: Any) -> str:
    if not isinstance(artifact_id, str) or not _DIGEST.match(artifact_id):
        raise EdgerunError(f"{artifact_id!r:.80} is not an artifact id (a sha256)", HINT)
    return artifact_id


def artifact_path(artifact_id: str) -> Path | None:
    """The stored artifact's directory, or None when this device does not have it."""
    path = store_dir() / _digest(artifact_id)
    return path if path.is_dir() else None


def _staging(artifact_id: str, token: Any) -> Path:
    from edgerun.core.leftovers import SCRATCH_PREFIX, owner_tag

    if not isinstance(token, str) or not _TOKEN.match(token):
        raise EdgerunError(f"{token!r:.40} is not a transfer token", HINT)
    # The scratch prefix and owner tag let sweep_stale remove what a killed worker left.
    return store_dir() / f"{SCRATCH_PREFIX}{owner_tag()}.{token}{_digest(artifact_id)[:16]}"


def begin(artifact_id: str, manifest: bytes) -> str:
    """Open a transfer of artifact `artifact_id` whose manifest is `manifest`; return the
    transfer token. Refuses a manifest that is too large, does not hash to the id, or is not
    a valid edgerun manifest."""
    from edgerun.core.manifest import MANIFEST_NAME, read_manifest

    _digest(artifact_id)
    if not isinstance(manifest, bytes) or len(manifest) > MAX_MANIFEST_BYTES:
        raise EdgerunError(f"manifest refused: not bytes or over {MAX_MANIFEST_BYTES} bytes", HINT)
    if hashlib.sha256(manifest).hexdigest() != artifact_id:
        raise EdgerunError("manifest refused: its sha256 is not the artifact id", HINT)
    token = os.urandom(8).hex()
    staging = _staging(artifact_id, token)
    staging.mkdir()
    try:
        (staging / MANIFEST_NAME).write_bytes(manifest)
        read_manifest(staging)  # paths contained, fields typed
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return token


def _declared(staging: Path) -> dict[str, int]:
    from edgerun.core.manifest import read_manifest

    return {f["name"]: int(f["bytes"]) for f in read_manifest(staging).get("files", [])}


def write_chunk(artifact_id: str, token: str, name: str, offset: int, data: bytes) -> int:
    """Write `data` at `offset` of file `name` of an open transfer; return the bytes written.
    The file must be listed in the manifest and the chunk must lie inside its declared size."""
    from edgerun.core.manifest import MANIFEST_NAME
    from edgerun.core.untrusted import contained, is_int

    staging = _staging(artifact_id, token)
    size = _declared(staging).get(name)
    if size is None:
        raise EdgerunError(f"{name!r:.80} is not a file of this artifact's manifest", HINT)
    path = contained(staging, name, "file", HINT)
    if path.resolve() == (staging / MANIFEST_NAME).resolve():
        raise EdgerunError(f"{name!r:.80} would overwrite the artifact's own manifest", HINT)
    if not isinstance(data, bytes) or len(data) > MAX_CHUNK_BYTES:
        raise EdgerunError(f"chunk of {name} refused: over {MAX_CHUNK_BYTES} bytes", HINT)
    if not is_int(offset) or offset + len(data) > size:
        raise EdgerunError(f"chunk of {name} at {offset!r:.20} lies outside its {size} bytes", HINT)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "r+b" if path.exists() else "wb") as fh:
        fh.seek(offset)
        fh.write(data)
    return len(data)


def finish(artifact_id: str, token: str) -> str:
    """Verify every file of an open transfer against the manifest (size and full sha256, read
    in chunks) and move it into the store; return its path. A mismatch removes the transfer
    and raises EdgerunError naming the file."""
    from edgerun.core.integrity import check_files
    from edgerun.core.manifest import MANIFEST_NAME, read_manifest

    staging = _staging(artifact_id, token)
    try:
        manifest = (staging / MANIFEST_NAME).read_bytes()
        if hashlib.sha256(manifest).hexdigest() != artifact_id:  # written by begin() only
            raise EdgerunError("refused on arrival: the manifest changed during the transfer", HINT)
        entries = read_manifest(staging).get("files", [])
        for entry in entries:
            path = staging / entry["name"]
            have = path.stat().st_size if path.is_file() else None
            if have != entry["bytes"]:
                raise EdgerunError(
                    f"refused on arrival: {entry['name']} has {have} bytes, the manifest says "
                    f"{entry['bytes']}",
                    HINT,
                )
        try:
            check_files(staging, entries, full=True)
        except EdgerunError as exc:
            detail = exc.message.replace(str(staging) + os.sep, "")
            raise EdgerunError(f"refused on arrival: {detail}", HINT) from exc
        final = staging.parent / artifact_id
        if final.is_dir():  # another transfer of the same artifact finished first
            shutil.rmtree(staging)
        else:
            staging.rename(final)
        return str(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def abort(artifact_id: str, token: str) -> None:
    """Remove an open transfer (nothing is left in the store)."""
    shutil.rmtree(_staging(artifact_id, token), ignore_errors=True)
