"""The library API behind `edgerun.load`: a loaded model, conversations, prefix KV reuse,
speculative decoding and the fidelity reference an artifact ships with."""
