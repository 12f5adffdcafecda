"""Backends that load a draft/target pair: `reference` (PyTorch + transformers) and
`neuronx` (transformers-neuronx, the only module that imports it)."""
