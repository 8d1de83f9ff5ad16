"""Weights I/O: read any weight file safely (`files`), every DiT checkpoint layout in and out
(`checkpoint`), and the `python -m sf_core.weights.convert` command."""
