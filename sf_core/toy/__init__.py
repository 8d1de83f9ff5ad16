"""A procedural video world with exact metrics: the default model's training domain and the
reproduction of the paper's Table 2 in miniature. Pure PyTorch, no downloads."""
