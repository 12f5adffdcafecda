"""A stand-in for `nkilib` (the NKI Library's kernels), which NxD Inference 0.9 imports at
import time (models/llama/modeling_llama.py, modules/generation/sampling.py at c63afe0)."""
