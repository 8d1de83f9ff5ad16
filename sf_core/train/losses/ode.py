"""ODE-regression initialisation of the causal student (selfforcing.md §7.7).

Per block, an index into the stored trajectory is drawn independently; each frame takes its block's
trajectory point and timestep; the whole clip runs through the block-causal parallel forward (no cache);
loss = MSE(x0̂, clean end of the trajectory) over frames whose timestep is not 0.
"""
from __future__ import annotations

import torch

from ...scheduler import FlowMatchScheduler


def ode_regression_loss(generator, trajectory: torch.Tensor, timesteps, context: torch.Tensor,
                        rng: torch.Generator, sched: FlowMatchScheduler, chunk_frames: int = 3,
                        window: int = -1) -> tuple[torch.Tensor, dict[str, float]]:
    """trajectory [B, K, F, C, h, w] (index K−1 = clean), timesteps: K values (last 0)."""
    b, k, f = trajectory.shape[:3]
    ts = torch.as_tensor(list(timesteps), dtype=torch.float32, device=trajectory.device)
    if ts.numel() != k:
        raise ValueError(f"ODE trajectory has {k} points but {ts.numel()} timesteps were given")
    if f % chunk_frames:
        raise ValueError(f"ODE trajectory has {f} frames, not a multiple of chunk_frames={chunk_frames}")
    idx = torch.randint(0, k, (b, f // chunk_frames), generator=rng, device=rng.device).to(trajectory.device)
    idx = idx.repeat_interleave(chunk_frames, dim=1)                       # [B, F]
    gather = idx[:, None, :, None, None, None].expand(-1, 1, -1, *trajectory.shape[3:])
    x = torch.gather(trajectory, 1, gather)[:, 0]                          # [B, F, C, h, w]
    t = ts[idx]                                                            # [B, F]
    target = trajectory[:, -1]
    x0 = sched.to_x0(x, generator.forward_parallel(x, t, context, chunk_frames, window), t)
    mask = (t != 0).to(x0.dtype)[..., None, None, None]
    per_frame = x0[0, 0].numel()
    loss = (((x0.float() - target.float()) ** 2) * mask).sum() / (mask.sum() * per_frame).clamp_min(1)
    return loss, {"ode_loss": float(loss.detach()), "ode_noisy_frames": float(mask.sum())}
