"""Layer 6: will the deployment run, before anything loads: findings and their context (base),
the generic rules (rules), NxD Inference's (nxdi), memory per NeuronCore (memory), the
host check (doctor) and the entry point that runs every rule (check).
"""
