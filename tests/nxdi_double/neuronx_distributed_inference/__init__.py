"""A test double of NxD Inference 0.8.16251 (SDK 2.28; source commit cd3abf3), written from the
library's source: the configuration objects and their validation, the graph inventory of each
speculation mode, routing by position and width, bucket padding, a positional KV cache per seq
id, the output shapes, and the defects neuron-spec has to live with. A tiny Hugging Face Llama
computes underneath; nothing here is shipped."""
