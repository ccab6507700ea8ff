"""The README's CLI reference is generated from --help and must be current."""

from __future__ import annotations

from pathlib import Path

from edgerun.cli.reference import END, START, reference_markdown

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_cli_reference_is_current() -> None:
    text = README.read_text()
    current = text[text.index(START) + len(START) : text.index(END)].strip()
    assert current == reference_markdown().strip(), "run `make docs` to regenerate it"


def test_reference_covers_every_command() -> None:
    from edgerun.cli import COMMANDS

    ref = reference_markdown()
    for name in COMMANDS:
        assert f"`edgerun {name}`" in ref
