"""transformers-neuronx: backend.py (loading, compiling, the only module that imports the
library), runner.py (the `engine` loop's Runner over forward/speculative_forward) and
library.py (the `library` loop: SpeculativeGenerator.sample made safe from outside)."""

from .backend import NeuronxPair, load_neuronx_generator

__all__ = ["NeuronxPair", "load_neuronx_generator"]
