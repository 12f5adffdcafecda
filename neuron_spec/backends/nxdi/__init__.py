"""NxD Inference (neuronx_distributed_inference: 0.8 on Neuron SDK 2.28, 0.9 on 2.29, 0.10 on
2.30/2.31): plan.py (the load plan as data), surface.py (what the backend needs of the library,
checked before anything compiles), runner.py and batch_runner.py (an application as an engine
Runner), fused.py (the fused graph round by round), backend.py (imports the library)."""
