"""Layer 3: where weights come from: checkpoints on disk and their sizes (checkpoint), Hugging
Face Hub ids (hub), s3:// prefixes (download), the demo model (demo) and loading a model and
its tokenizer with transformers (hf), which every backend uses.
"""
