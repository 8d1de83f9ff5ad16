"""sf_core: Self Forcing in pure PyTorch — causal Wan DiT with KV cache, streaming generation, training.

Nothing here imports ComfyUI. See docs/api.md for the public API.
"""
__version__ = "0.1.0"
