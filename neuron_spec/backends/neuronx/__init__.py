"""transformers-neuronx: backend.py (loading, compiling, the only module that imports the
library), plan.py (the load plan as data), runner.py and batch_runner.py (the engine's Runners
over forward/speculative_forward) and library.py (the `library` loop: SpeculativeGenerator.sample
made safe from outside). Importing this package imports nothing heavy."""
