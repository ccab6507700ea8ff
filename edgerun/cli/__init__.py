"""The `edgerun` command line. Each command lives in its own module and is imported only when
it is invoked (or when help lists it), so `edgerun --help` stays fast and torch-free."""

from __future__ import annotations

import importlib
import logging
import signal
from typing import Any

import click

from edgerun import __version__
from edgerun.core.errors import EdgerunError

# name -> "module:attribute"; one line per command.
COMMANDS: dict[str, str] = {
    "pull": "edgerun.cli.pull:pull",
    "info": "edgerun.cli.info:info",
    "run": "edgerun.cli.run:run",
    "export": "edgerun.cli.export:export",
    "verify": "edgerun.cli.verify:verify",
    "power": "edgerun.cli.power:power",
    "bench": "edgerun.cli.bench:bench",
    "compare": "edgerun.cli.compare:compare",
    "profiles": "edgerun.cli.profiles:profiles",
    "serve": "edgerun.cli.serve:serve",
    "lab": "edgerun.cli.lab:lab",
    "tune": "edgerun.cli.tune:tune",
    "list": "edgerun.cli.cache:list_models",
    "rm": "edgerun.cli.cache:rm",
}

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class LazyGroup(click.Group):
    """A click group whose sub-commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attr = target.split(":")
        cmd = getattr(importlib.import_module(module), attr)
        assert isinstance(cmd, click.Command)
        return cmd

    def invoke(self, ctx: click.Context) -> Any:
        """Run the sub-command; an EdgerunError becomes one line on stderr and an exit code.

        Ctrl-C, SIGTERM and SIGHUP all unwind through the same cleanup (temporary directories
        removed) and exit with 128 + the signal number."""
        from edgerun.core.leftovers import terminate_as_interrupt

        with terminate_as_interrupt():
            try:
                return super().invoke(ctx)
            except EdgerunError as exc:
                if ctx.obj and ctx.obj.get("verbose"):
                    raise
                click.echo(f"error: {exc.for_cli()}", err=True)
                ctx.exit(exc.exit_code)
            except KeyboardInterrupt as exc:
                signum = getattr(exc, "signum", signal.SIGINT)
                what = "Interrupted" if signum == signal.SIGINT else f"Stopped by {exc}"
                click.echo(f"{what}: nothing partial was kept.", err=True)
                ctx.exit(128 + signum)


@click.group(cls=LazyGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "--version", prog_name="edgerun")
@click.option("-v", "--verbose", is_flag=True, help="Log details, and show tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """edgerun: export a Hugging Face causal LM for the edge, run it, and measure it honestly."""
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )


def main(argv: list[str] | None = None) -> Any:
    """Console-script entry point."""
    return cli.main(args=argv, prog_name="edgerun")
