"""Layer 10: the `neuron-spec` command: arguments (args), dispatch and exit codes (main), the
subcommands by kind (check, run, deploy), shared helpers (common) and terminal output (term,
plan_view).
"""
