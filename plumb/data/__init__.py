"""Data files shipped with plumb: the everyday prompts `plumb tune` samples from, and a set of
concise-vs-padded preference pairs (the DPO bench's data, an example for `plumb data import`)."""
