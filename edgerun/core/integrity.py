"""File hashes for the manifest, and the integrity check every load runs.

At export each file gets its size and sha256; a file larger than SMALL_FILE also gets the sha256
of each of its blocks (at most MAX_BLOCKS of them, so a manifest stays small). Every load then
checks, for each file the manifest lists:

- its size (a truncated or padded copy);
- small files (tokenizer, config, ONNX graph): the full sha256;
- large files (weights): the first block, the last block and SAMPLED_BLOCKS blocks picked at
  random on each load. A broad corruption or a replaced file is caught; a small edit inside one
  unsampled block is not (it is caught with probability ~samples/blocks per load). Files of
  older manifests without block hashes get the size check only.

`load(..., verify=True)` / `edgerun run --verify` hash every file in full, like `edgerun verify`.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

from edgerun.core.errors import EdgerunError

SMALL_FILE = 8 << 20  # hashed in full on every load
MIN_BLOCK = 1 << 20
MAX_BLOCKS = 1024
SAMPLED_BLOCKS = 6  # random blocks per large file per load, besides the first and the last
BLOCK_HEX = 32  # block digests are sha256 truncated to 128 bits


def block_size(size: int) -> int:
    """The block size for a file of `size` bytes: a power of two >= 1 MiB, <= MAX_BLOCKS blocks."""
    block = MIN_BLOCK
    while block * MAX_BLOCKS < size:
        block *= 2
    return block


def file_entry(path: Path, name: str) -> dict[str, Any]:
    """{name, bytes, sha256[, blocks: {size, sha256: [...]}]} of one file, read once."""
    size = path.stat().st_size
    full = hashlib.sha256()
    bsize = block_size(size)
    with open(path, "rb") as fh:
        blocks = list(_block_digests(fh, bsize, full))
    entry: dict[str, Any] = {"name": name, "bytes": size, "sha256": full.hexdigest()}
    if size > SMALL_FILE:
        entry["blocks"] = {"size": bsize, "sha256": blocks}
    return entry


def blocks_ok(blocks: Any, size: int) -> bool:
    """Whether a manifest's `blocks` record is well formed for a file of `size` bytes."""
    if not isinstance(blocks, dict) or not isinstance(blocks.get("size"), int):
        return False
    bsize, digests = blocks["size"], blocks.get("sha256")
    if isinstance(bsize, bool) or bsize < 1 or not isinstance(digests, list):
        return False
    return len(digests) == -(-size // bsize) and all(
        isinstance(d, str) and len(d) == BLOCK_HEX for d in digests
    )


def check_files(root: Path, entries: list[dict[str, Any]], full: bool = False) -> None:
    """Raise EdgerunError naming the first listed file that is missing or differs from the
    manifest: every file's size first, then small files (and every file when `full`) by full
    hash and block hashes, large ones by sampled blocks. `edgerun verify` runs the same check
    (file_problem, full), so the two cannot disagree."""
    for entry in entries:  # the cheap checks of every file before any hashing
        path = Path(root) / entry["name"]
        if not path.is_file():
            raise EdgerunError(f"{path} is missing", "re-export the artifact")
        if (size := path.stat().st_size) != entry["bytes"]:
            raise EdgerunError(
                f"{path} is {size} bytes but the manifest says {entry['bytes']} (truncated or replaced)",
                "re-export or re-copy the artifact; `edgerun verify` checks every hash",
            )
    for entry in entries:
        problem = file_problem(Path(root), entry, full)
        if problem is not None:
            raise _changed(Path(root) / entry["name"], problem)


def file_problem(root: Path, entry: dict[str, Any], full: bool = False) -> str | None:
    """How the file a manifest entry (name, bytes, sha256[, blocks]) describes differs from it,
    or None when it matches. With `full`, or for a small file, every byte is read and both its
    sha256 and every recorded block hash compared; otherwise the first, last and some random
    blocks are."""
    path = root / entry["name"]
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size != entry["bytes"]:
        return f"it is {size} bytes, not {entry['bytes']}"
    blocks = entry.get("blocks")
    if full or size <= SMALL_FILE:
        return _full_problem(path, entry["sha256"], blocks)
    if blocks is not None:
        return _sampled_problem(path, blocks)
    return None


def _full_problem(path: Path, sha256: str, blocks: dict[str, Any] | None) -> str | None:
    full = hashlib.sha256()
    bad = None
    with open(path, "rb") as fh:
        bsize = blocks["size"] if blocks else MIN_BLOCK
        for i, digest in enumerate(_block_digests(fh, bsize, full)):
            if blocks and bad is None and digest != blocks["sha256"][i]:
                bad = i
    if full.hexdigest() != sha256:
        return "its sha256 differs from the manifest"
    if blocks is not None and bad is not None:
        return f"block {bad} of {len(blocks['sha256'])} differs from the manifest"
    return None


def _block_digests(fh: Any, bsize: int, full: Any = None) -> Any:
    """The truncated sha256 of each `bsize` block of an open file, read in chunks of at most
    MIN_BLOCK (a manifest's block size is never trusted to size a buffer); `full` is fed too."""
    while True:
        block, left = hashlib.sha256(), bsize
        while left and (chunk := fh.read(min(left, MIN_BLOCK))):
            block.update(chunk)
            if full is not None:
                full.update(chunk)
            left -= len(chunk)
        if left == bsize:
            return
        yield block.hexdigest()[:BLOCK_HEX]


def _sampled_problem(path: Path, blocks: dict[str, Any]) -> str | None:
    bsize, digests = blocks["size"], blocks["sha256"]
    last = len(digests) - 1
    picks = {
        0,
        last,
        *random.SystemRandom().sample(range(len(digests)), min(SAMPLED_BLOCKS, last + 1)),
    }
    with open(path, "rb") as fh:
        for i in sorted(picks):
            fh.seek(i * bsize)
            if next(_block_digests(fh, bsize), None) != digests[i]:
                return f"block {i} of {last + 1} differs from the manifest"
    return None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (the one file-hash helper of edgerun)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _changed(path: Path, why: str) -> EdgerunError:
    return EdgerunError(
        f"{path} has changed since export: {why}",
        "re-export or re-copy the artifact; `edgerun verify` lists every changed file",
    )
