"""NxD Inference (neuronx_distributed_inference, the Neuron SDK 2.28 stack for Inf2/Trn1):
plan.py (the load plan as data), runner.py (an application as an engine Runner), fused.py (the
fused graph round by round), backend.py (the only module importing the library)."""
