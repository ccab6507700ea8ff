"""The import graph of edgerun's own modules (every import, lazy ones inside functions too):
no cycle, and no arrow from a lower layer to a higher one. Read with `ast`, nothing imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Where each installed package's sources lie (pyproject's package-dir).
ROOTS = {"edgerun": REPO / "edgerun", "edgerun.exporters": REPO / "exporters"}
# The layers are folders: a module's layer is the folder it lives in (edgerun/<folder>/, or the
# edgerun.exporters package), lowest first. A module may import its own layer and the ones below,
# never above. Only the order is kept here; which module sits where is read from the tree.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("core",),       # errors, untrusted files, the home directory, manifests, progress
    ("sources",),    # checkpoints, GGUF headers and files, the pulled-model cache
    ("text",),       # tokenizers, chat templates, sampling, constrained output, tool calls
    ("power",),      # power meters
    ("device",),     # machine facts, device profiles, their detection
    ("backends",),   # the backend plugins and how one is chosen and opened for a profile
    ("runtime",),    # the library API: a loaded model, conversations, KV reuse
    ("bench",),
    ("exporters",),  # with the on-device fidelity check, which scores by the export's gates
    ("tune",),
    ("serve", "lab"),
    ("cli",),
)  # fmt: skip
# The package's own two files: `import edgerun` is the library API, `python -m edgerun` the CLI.
ROOT_FILES = {"edgerun": "runtime", "edgerun.__main__": "cli"}


def _module_name(path: Path) -> str:
    for package, root in sorted(ROOTS.items(), key=lambda kv: -len(str(kv[1]))):
        if path.is_relative_to(root):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            return ".".join([package, *parts])
    raise AssertionError(path)


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for root in ROOTS.values():
        for path in root.rglob("*.py"):
            if "data" not in path.relative_to(root).parts:
                found[_module_name(path)] = path
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {owner(a.name) for a in node.names if a.name.startswith("edgerun")}
            elif (
                isinstance(node, ast.ImportFrom)
                and node.level == 0
                and (node.module or "").startswith("edgerun")
            ):
                for alias in node.names:  # `from edgerun.x import y`: y may be a module
                    full = f"{node.module}.{alias.name}"
                    targets.add(full if full in modules else owner(str(node.module)))
        graph[name] = {t for t in targets if t is not None and t != name}
    return graph


def _folder(module: str) -> str:
    if module in ROOT_FILES:
        return ROOT_FILES[module]
    folder = module.split(".")[1]
    loose = (
        module.count(".") == 1 and module not in ROOTS and not (ROOTS["edgerun"] / folder).is_dir()
    )
    assert not loose, f"{module} lies loose in edgerun/: put it in its layer's folder"
    return folder


def _layer(module: str) -> int:
    folder = _folder(module)
    for index, folders in enumerate(LAYERS):
        if folder in folders:
            return index
    raise AssertionError(f"edgerun/{folder}/ is in no layer: add it to LAYERS")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_is_read() -> None:
    graph = _graph()
    assert len(graph) > 80
    assert "edgerun.power.registry" in graph["edgerun.device.profile"]  # a lazy import counts
    assert "edgerun.core.errors" in graph["edgerun.exporters.pipeline"]


def test_no_import_cycle() -> None:
    assert _cycles(_graph()) == []


def test_no_arrow_points_up() -> None:
    upward = [
        f"{a} (layer {_layer(a)}) -> {b} (layer {_layer(b)})"
        for a, targets in sorted(_graph().items())
        for b in sorted(targets)
        if _layer(b) > _layer(a)
    ]
    assert upward == []


def test_every_module_and_folder_has_a_layer() -> None:
    """No module lies loose at edgerun/'s top; every folder (package) there is a listed layer."""
    for module in _modules():
        _layer(module)
    folders = {p.name for p in ROOTS["edgerun"].iterdir() if (p / "__init__.py").is_file()}
    listed = {folder for layer in LAYERS for folder in layer}
    assert folders | {"exporters"} == listed


def test_the_checks_can_fail() -> None:
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert _layer("edgerun.cli.export") > _layer("edgerun.exporters.pipeline")
    assert _layer("edgerun.device.profile") < _layer("edgerun.backends.registry")
    with pytest.raises(AssertionError, match="loose"):
        _layer("edgerun.newmodule")
    with pytest.raises(AssertionError, match="no layer"):
        _layer("edgerun.newfolder.x")


def test_ruff_sorts_every_edgerun_import_as_first_party() -> None:
    """edgerun.exporters lives in exporters/ (package-dir): without `known-first-party` ruff
    sorted it as third-party in files outside edgerun/, splitting one import block in two."""
    import subprocess
    import sys

    snippet = (
        "import click\n\nfrom edgerun.core.errors import EdgerunError\n"
        "from edgerun.exporters.formats import ExportOptions\n\n"
        "print(click, EdgerunError, ExportOptions)\n"
    )
    for where in ("edgerun", "exporters", "tests", "benchmarks"):
        done = subprocess.run(
            [sys.executable, "-m", "ruff", "check", "--select", "I", "--stdin-filename",
             f"{where}/snippet.py", "-"],
            input=snippet, cwd=REPO, capture_output=True, text=True,
        )  # fmt: skip
        assert done.returncode == 0, (where, done.stdout)
