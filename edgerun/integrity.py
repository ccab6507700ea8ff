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
import os
import random
from pathlib import Path
from typing import Any

from edgerun.errors import EdgerunError

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
    blocks = []
    with open(path, "rb") as fh:
        while chunk := fh.read(bsize):
            full.update(chunk)
            blocks.append(hashlib.sha256(chunk).hexdigest()[:BLOCK_HEX])
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
    """Raise EdgerunError naming the first listed file whose content differs from the manifest:
    small files (and every file when `full`) by full hash, large ones by sampled blocks."""
    for entry in entries:
        path = root / entry["name"]
        if full or entry["bytes"] <= SMALL_FILE:
            if sha256_file(path) != entry["sha256"]:
                raise _changed(path, "its sha256 differs from the manifest")
        elif "blocks" in entry:
            _check_sampled(path, entry["blocks"])


def _check_sampled(path: Path, blocks: dict[str, Any]) -> None:
    bsize, digests = blocks["size"], blocks["sha256"]
    last = len(digests) - 1
    picks = {
        0,
        last,
        *random.SystemRandom().sample(range(len(digests)), min(SAMPLED_BLOCKS, last + 1)),
    }
    with open(path, "rb") as fh:
        for i in sorted(picks):
            data = os.pread(fh.fileno(), bsize, i * bsize)
            if hashlib.sha256(data).hexdigest()[:BLOCK_HEX] != digests[i]:
                raise _changed(path, f"block {i} of {last + 1} differs from the manifest")


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
