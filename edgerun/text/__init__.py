"""Text in and out of a model: tokenizers, chat templates, sampling, constrained output and tool
calls."""
