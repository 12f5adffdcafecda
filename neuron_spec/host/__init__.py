"""Layer 2: the machine: facts about a Neuron host, from the catalog or detected (facts), the
probes of its tools (probe) and the Neuron SDK releases' component sets (sdk_releases).
Standard library only, so scripts/launch.sh runs it before anything is installed.
"""
