"""`edgerun list` and `edgerun rm`: the pulled-model cache."""

from __future__ import annotations

import click

from edgerun.cli.options import echo_json, json_option
from edgerun.sources.describe import human_bytes

HEADERS = ("name", "source", "kind", "size", "modified", "state")


@click.command("list")
@json_option
def list_models(as_json: bool) -> None:
    """List the models pulled into $EDGERUN_HOME/models, with size and state.

    A damaged entry is listed with what is wrong (rebuild it with `edgerun pull --refresh`).
    """
    from edgerun.sources.cache_list import cached_models

    models = cached_models()
    if as_json:
        echo_json([m.to_json() for m in models])
        return
    if not models:
        click.echo("no models cached (edgerun pull MODEL adds one)")
        return
    rows = [
        (m.name, m.source or "?", m.kind or "?", human_bytes(m.size_bytes), m.modified,
         "ok" if m.problem is None else f"damaged: {m.problem}")
        for m in models
    ]  # fmt: skip
    widths = [max(len(str(r[i])) for r in (HEADERS, *rows)) for i in range(len(HEADERS) - 1)]
    for row in (HEADERS, *rows):
        cells = [str(c).ljust(w) for c, w in zip(row, widths, strict=False)]
        click.echo("  ".join([*cells, str(row[-1])]))


@click.command("rm")
@click.argument("names", nargs=-1, required=True)
@json_option
def rm(names: tuple[str, ...], as_json: bool) -> None:
    """Remove cached models by NAME (as `edgerun list` shows it) or by the source pulled."""
    from edgerun.sources.cache_list import remove_model

    removed = [remove_model(name) for name in names]
    if as_json:
        echo_json([m.to_json() for m in removed])
        return
    for model in removed:
        click.echo(f"removed {model.name} ({human_bytes(model.size_bytes)})")
