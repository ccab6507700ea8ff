"""Option decorators that several commands share."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def json_option(f: F) -> F:
    """`--json`: print machine-readable JSON on stdout instead of a table."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(f)


def wide_option(f: F) -> F:
    """`--wide`: a table with every column, instead of those that fit the terminal."""
    return click.option(
        "--wide", is_flag=True, help="Show every column, however wide the table gets."
    )(f)


def prompt_cache_option(f: F) -> F:
    """`--prompt-cache-mb`: the bound of the prompt (KV prefix) cache, for `run` and `serve`."""
    return click.option(
        "--prompt-cache-mb",
        type=float,
        default=None,
        help="Bound of the prompt (KV prefix) cache in MiB; 0: off (default: what the profile's"
        " memory budget leaves, at most 256).",
    )(f)


def devices_option(f: F) -> F:
    """`--devices`: which lab devices a lab command runs on."""
    return click.option(
        "--devices",
        "device_spec",
        default="all",
        show_default=True,
        help="all, ID,ID,... or profile:ID.",
    )(f)


def objective_option(f: F) -> F:
    """`--objective`: what `edgerun tune` and `edgerun lab tune` optimise."""
    return click.option(
        "--objective",
        type=click.Choice(["decode", "ttft", "energy"]),
        default="decode",
        show_default=True,
        help="Maximise decode tok/s, or minimise time to first token or decode J/token (needs a"
        " power meter).",
    )(f)


def workload_options(f: F) -> F:
    """The bench workload, shared by `edgerun bench` and `edgerun lab bench` (which runs it on
    every device): --prompt-tokens, --gen-tokens, --reps, --warmup, --threads, --profile,
    --ctx, --power, --idle-seconds, --assume-watts, and the hidden --loader (tests)."""
    from edgerun.power.registry import CHOICES

    options = [
        click.option(
            "--prompt-tokens",
            default="128,512",
            show_default=True,
            help="Prompt lengths, comma-separated.",
        ),
        click.option(
            "--gen-tokens", default=128, show_default=True, help="Tokens generated per repetition."
        ),
        click.option(
            "--reps", default=5, show_default=True, help="Measured repetitions per artifact."
        ),
        click.option(
            "--warmup", default=1, show_default=True, help="Unmeasured repetitions first."
        ),
        click.option("--threads", type=int, help="CPU threads (default: the profile's)."),
        click.option("--profile", help="Device profile id or TOML path (default: detected)."),
        click.option(
            "--ctx", type=int, help="Context length to load with (the workload must fit it)."
        ),
        click.option(
            "--power",
            "power_spec",
            default="auto",
            show_default=True,
            help=f"Power meter: {CHOICES}.",
        ),
        click.option(
            "--idle-seconds", default=10.0, show_default=True, help="Idle baseline before the run."
        ),
        click.option(
            "--assume-watts", type=float, help="No meter: estimate energy at this power (labelled)."
        ),
        click.option("--loader", default="edgerun:load", hidden=True, help="Model loader (tests)."),
    ]
    for option in reversed(options):  # click lists options in decorator order, top first
        f = option(f)
    return f


def echo_json(data: Any) -> None:
    """Print `data` as indented JSON on stdout."""
    click.echo(json.dumps(data, indent=2, default=str))


def speculative_option(f: F) -> F:
    """`--speculative auto|on|off`: prompt-lookup speculative decoding (edgerun.runtime.speculative)."""
    return click.option(
        "--speculative",
        type=click.Choice(["auto", "on", "off"]),
        default="auto",
        metavar="MODE",
        help="Prompt-lookup decoding: auto (greedy, exact kernels), on, off.",
    )(f)


class GroupedCommand(click.Command):
    """A command whose --help lists its options in named sections. `groups`: section title ->
    option names (their Python names), in order; options in no section come last, under
    "Other options"."""

    def __init__(self, *args: Any, groups: dict[str, list[str]] | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.groups = groups or {}

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        params = [p for p in self.get_params(ctx) if isinstance(p, click.Option)]
        records = {p.name: p.get_help_record(ctx) for p in params}
        placed: set[str | None] = set()
        for title, names in self.groups.items():
            rows = [records[n] for n in names if records.get(n)]
            placed.update(names)
            if rows:
                with formatter.section(title):
                    formatter.write_dl([r for r in rows if r is not None])
        rest = [r for n, r in records.items() if r and n not in placed]
        if rest:
            with formatter.section("Other options"):
                formatter.write_dl(rest)
