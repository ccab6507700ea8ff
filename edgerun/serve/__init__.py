"""`edgerun serve`: an OpenAI-compatible HTTP server over loaded artifacts (the `serve` extra).

    schema   request bodies -> checked dataclasses, OpenAI-style errors (no web framework)
    engine   one generation at a time per model, a bounded queue, cancellation, metrics
    app      the Starlette routes: /v1/models, /v1/completions, /v1/chat/completions, ...
    server   serve(): load the artifacts and run uvicorn with a graceful drain

Importing `edgerun` never imports this package; `edgerun serve` imports it when invoked.
"""
