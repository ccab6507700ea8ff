"""Where models come from: a hub id, a local checkpoint or a GGUF file resolved into the cache,
checkpoint and GGUF headers read without a framework, and model code that never runs."""
