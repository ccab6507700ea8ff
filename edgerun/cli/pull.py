"""`edgerun pull SOURCE`."""

from __future__ import annotations

import click

from edgerun.cli.options import echo_json, json_option


@click.command()
@click.argument("source")
@json_option
def pull(source: str, as_json: bool) -> None:
    """Resolve SOURCE to a local Hugging Face checkpoint and print its path.

    SOURCE is a hub id (org/name[@revision]), a local HF model directory, a .gguf file (dequantized
    through transformers' GGUF loader) or a demo name (smollm2-135m). Pulls are cached in
    $EDGERUN_HOME/models and atomic: an interrupted pull leaves no partial entry.
    """
    from edgerun.sources import resolve

    ckpt = resolve(source, progress=not as_json)
    if as_json:
        echo_json(ckpt.to_json())
    else:
        click.echo(str(ckpt.path))
