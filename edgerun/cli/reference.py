"""Generate the README's CLI reference from the commands' own `--help` (run: make docs).

A test compares the README with this output, so the reference cannot drift from the code.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click

START, END = "<!-- cli-reference:start -->", "<!-- cli-reference:end -->"
WIDTH = 100


def _context(command: click.Command, name: str, parent: click.Context | None) -> click.Context:
    settings = {**command.context_settings, "terminal_width": WIDTH, "max_content_width": WIDTH}
    return click.Context(command, info_name=name, parent=parent, **settings)


def _walk(command: click.Command, path: list[str], parent: click.Context | None) -> list[str]:
    ctx = _context(command, path[-1], parent)
    title = "#" * min(len(path) + 2, 5)
    parts = [f"{title} `{' '.join(path)}`\n\n```\n{command.get_help(ctx)}\n```\n"]
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                parts += _walk(sub, [*path, name], ctx)
    return parts


def reference_markdown() -> str:
    """The Markdown CLI reference: one section per command, with its help text."""
    from edgerun.cli import cli

    return "\n".join(_walk(cli, ["edgerun"], None))


def update_readme(readme: Path) -> bool:
    """Rewrite the reference between the markers; return True if the file changed."""
    text = readme.read_text()
    block = f"{START}\n\n{reference_markdown()}\n{END}"
    new = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    if new != text:
        readme.write_text(new)
    return new != text


if __name__ == "__main__":
    changed = update_readme(Path(sys.argv[1] if len(sys.argv) > 1 else "README.md"))
    print("README.md CLI reference " + ("updated" if changed else "already current"))
