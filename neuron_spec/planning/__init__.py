"""Layer 7: what the deployment will cost and how fast it will be: the core layout and memory
plan (plan), the latency model (perf), the performance sections of `plan` (perfplan) and
instance prices (pricing).
"""
