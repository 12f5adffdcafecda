"""Layer 4: the speculative engine, independent of how models run: the loop over Runners
(loop), acceptors and sampling math, the Generator that turns text into figures (generate),
the speedup model (speedup) and the benchmark of draft lengths (bench). Only `speedup` is
imported by the light commands; the rest needs torch.
"""
