"""Every `edgerun ...` command line in the README's shell blocks parses with today's CLI: the
commands, options and argument counts a reader copies exist (nothing is executed)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from edgerun.cli import cli

README = Path(__file__).resolve().parents[1] / "README.md"


def _command_lines() -> list[str]:
    text = README.read_text(encoding="utf-8")
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():  # continuation lines joined
            line = line.split(" # ")[0].strip()
            if line.startswith("edgerun "):
                lines.append(line)
    return lines


def _parse(argv: list[str]) -> None:
    """Parse argv as click would run it, down to the leaf command, without invoking it."""
    command: click.Command = cli
    name = "edgerun"
    ctx = None
    while True:
        ctx = command.make_context(name, argv, parent=ctx, resilient_parsing=False)
        if not isinstance(command, click.Group):
            return
        args = [*ctx.protected_args, *ctx.args]
        if not args:
            return
        name, sub, argv = command.resolve_command(ctx, args)
        assert sub is not None, f"no command {name}"
        command = sub


COMMANDS = _command_lines()


def test_the_readme_has_command_lines() -> None:
    assert len(COMMANDS) >= 10


@pytest.mark.parametrize("line", COMMANDS)
def test_readme_command_parses(line: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the files a command names exist as empty placeholders here
    for token in shlex.split(line):
        if re.fullmatch(r"[\w./-]+\.(pem|key|toml|txt)", token):
            (tmp_path / token).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / token).touch()
    try:
        _parse(shlex.split(line)[1:])
    except click.exceptions.Exit:  # --help, --version
        pass
    except click.UsageError as exc:
        pytest.fail(f"README command does not parse: {line}\n  {exc.format_message()}")


@pytest.mark.parametrize(
    "argv", [["bench", "out/x", "--no-such-option"], ["exprot", "m"], ["lab", "bench"]]
)
def test_the_check_catches_a_stale_command(argv: list[str]) -> None:
    with pytest.raises(click.UsageError):
        _parse(argv)
