"""The import graph of edgerun's own modules (every import, lazy ones inside functions too):
no cycle, and no arrow from a lower layer to a higher one. Read with `ast`, nothing imported."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Where each installed package's sources lie (pyproject's package-dir).
ROOTS = {"edgerun": REPO / "edgerun", "edgerun.exporters": REPO / "exporters"}
# Layers, lowest first; a module takes the layer of the longest prefix listed. A module may
# import its own layer and the ones below, never above.
LAYERS: tuple[tuple[str, ...], ...] = (
    # base: errors, files, manifests, sources, tokenizers; no knowledge of devices or backends
    ("edgerun.errors", "edgerun.untrusted", "edgerun.home", "edgerun.leftovers",
     "edgerun.versions", "edgerun.integrity", "edgerun.manifest", "edgerun.gguf_header",
     "edgerun.gguf_source", "edgerun.machine", "edgerun.profile_schema", "edgerun.tokenizer",
     "edgerun.sampling", "edgerun.describe", "edgerun.checkpoint", "edgerun.cache_entry",
     "edgerun.sources", "edgerun.format_registry", "edgerun.cache_list",
     "edgerun.remote_code", "edgerun.chat_template", "edgerun.progress", "edgerun.constrain",
     "edgerun.tools"),
    # registries: power meters, the backend plugin interface and its entry points
    ("edgerun.power", "edgerun.backends.base", "edgerun.backends.registry"),
    # device profiles and their detection
    ("edgerun.profile", "edgerun.detect"),
    # backends chosen and opened for a profile
    ("edgerun.backends",),
    # the library API
    ("edgerun.model", "edgerun"),
    ("edgerun.bench",),
    # with the on-device fidelity check, which scores by the export's own validation gates
    ("edgerun.exporters", "edgerun.fidelity_check"),
    ("edgerun.tune",),
    ("edgerun.serve", "edgerun.lab"),
    ("edgerun.cli", "edgerun.__main__"),
)  # fmt: skip


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


def _layer(module: str) -> int:
    best, rank = -1, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), index
    assert rank >= 0, f"{module} is in no layer: add it to LAYERS"
    return rank


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
    assert "edgerun.backends.registry" in graph["edgerun.profile"]  # a lazy import counts
    assert "edgerun.errors" in graph["edgerun.exporters.pipeline"]


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


def test_the_checks_can_fail() -> None:
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert _layer("edgerun.cli.export") > _layer("edgerun.exporters.pipeline")
    assert _layer("edgerun.backends.registry") < _layer("edgerun.profile")
