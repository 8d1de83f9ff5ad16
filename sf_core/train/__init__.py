"""Self-forcing post-training: configs, distributed set-up, the loop, checkpoints and export.

Run with `python -m sf_core.train --config FILE [key.sub=value ...]` or under `torchrun`.
"""
