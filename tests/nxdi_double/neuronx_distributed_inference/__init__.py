"""A test double of NxD Inference, written from the library's source release by release:
0.8.16251 (SDK 2.28; commit cd3abf3) and 0.9.17334 (SDK 2.29; commits c63afe0 and ef2731e),
chosen by _release.py, with a 0.10 stand-in on 0.9's surface (0.10 has no public source). It
reproduces the configuration objects and their validation, the graph inventory of each
speculation mode, routing by position and width, bucket padding, a positional KV cache per seq
id, the output shapes, each release's differences, and the defects neuron-spec has to live
with. A tiny Hugging Face Llama computes underneath; nothing here is shipped."""
