"""`edgerun pull SOURCE`."""

from __future__ import annotations

import click

from edgerun.cli.options import echo_json, json_option


@click.command()
@click.argument("source")
@click.option(
    "--refresh",
    is_flag=True,
    help="Rebuild the cache entry even if one exists (e.g. one reported as damaged).",
)
@json_option
def pull(source: str, refresh: bool, as_json: bool) -> None:
    """Resolve SOURCE to a local Hugging Face checkpoint and print its path.

    SOURCE is a hub id (org/name[@revision]), a local HF model directory, a .gguf file (dequantized
    through transformers' GGUF loader) or a demo name (smollm2-135m). Pulls are cached in
    $EDGERUN_HOME/models and atomic: an interrupted or terminated pull leaves no partial entry,
    and leftovers of killed pulls are removed at the next start. A cache entry whose files have
    gone missing is reported as damaged; --refresh rebuilds it. Without torch (the lean install)
    a GGUF source is checked and its path printed instead: `run` and `bench` take it as it is.
    """
    from edgerun.sources.resolve import GgufOnly, resolve

    try:
        ckpt = resolve(source, progress=not as_json, refresh=refresh)
    except GgufOnly as lean:  # no torch: the GGUF is what this install can run
        click.echo(f"note: no HF checkpoint made: {lean.message} ({lean.hint})", err=True)
        gguf = {"path": str(lean.gguf), "source": source, "kind": "gguf-file"}
        if as_json:
            echo_json({**gguf, "checkpoint": None, "gguf_sha256": lean.sha256})
        else:
            click.echo(gguf["path"])
        return
    if as_json:
        echo_json(ckpt.to_json())
    else:
        click.echo(str(ckpt.path))
