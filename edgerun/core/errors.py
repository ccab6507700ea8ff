"""Errors that the CLI prints as one line: what is wrong, then how to fix it."""

from __future__ import annotations


class EdgerunError(Exception):
    """A user-facing error: `message` names the problem, `hint` the fix.

    The CLI prints ``error: <message> (<hint>)`` on one line and exits with `exit_code`;
    the traceback is shown only with ``-v``. Library code words `hint` for a caller of the
    library (``max_tokens=1``) and, where the command line spells the fix differently,
    `cli_hint` for the CLI (``--max-tokens 1``): `str()` gives the library's, `for_cli()` the CLI's.
    """

    exit_code = 2

    def __init__(
        self, message: str, hint: str | None = None, *, cli_hint: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.cli_hint = cli_hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message

    def for_cli(self) -> str:
        """The one line the CLI prints: the message and the command-line hint."""
        hint = self.cli_hint or self.hint
        return f"{self.message} ({hint})" if hint else self.message


def first_line(exc: BaseException) -> str:
    """The first line of a foreign exception's text (a library's multi-line error), or its type
    name when it has none: what a one-line EdgerunError quotes of it."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class MissingExtraError(EdgerunError):
    """An optional dependency group is not installed."""

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(
            f"this needs the Python package '{module}', which is not installed",
            f"install it with: pip install 'edgerun[{extra}]'",
        )


def require(module: str, extra: str) -> None:
    """Raise MissingExtraError unless `module` can be imported (without importing it)."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MissingExtraError(module, extra)
