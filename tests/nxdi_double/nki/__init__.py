"""A stand-in for the `nki` package (Neuron Kernel Interface; 0.3.0 on SDK 2.29, 0.5.0 on 2.31)
that NxD Inference 0.9 imports at import time; the double imports it and nothing more."""
