"""nki.language, imported by NxD Inference 0.9's modeling_llama (as `nl`)."""
