"""The base layer: errors, untrusted-file reads, the edgerun home directory, manifests and their
integrity, progress lines. It imports nothing else of edgerun."""
