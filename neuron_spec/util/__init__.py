"""Layer 0: bounded, confined file and name handling (safeio: reads with size limits and
printable text; localtree: walking a directory without leaving it; s3names: S3 URIs and keys).
Imports nothing else of neuron_spec but errors.
"""
