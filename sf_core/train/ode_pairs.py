"""ODE-pair generation from a bidirectional teacher (selfforcing.md §7.7, with the shift-5 fix of §9 #6).

Euler integration of the teacher's probability-flow ODE: base σ_i = 1 − i/N (i = 0..N−1), shifted
σ'_i = s·σ_i / (1 + (s−1)·σ_i), σ'_N = 0; at each step the teacher predicts x0 with classifier-free guidance
in x0 space (uncond + g·(cond − uncond), negative prompt), the flow is v = (x − x0)/σ'_i and
x ← x + (σ'_{i+1} − σ'_i)·v. States are kept at `keep` indices of the N+1 states (0 = noise, −1 = clean).
With N = 48, shift 5, keep = (0, 12, 24, 36, −1) the kept timesteps are 1000, 937.5, 833.33, 625, 0:
exactly the warped inference steps.

File format (safetensors): "latents" [N, K, F, C, h, w], "timesteps" [K] float32, optionally "context"
[N, L, text_dim]; metadata "sf_ode" = JSON {shift, num_steps, guidance_scale, keep, prompts}.
"""
from __future__ import annotations

import argparse
import json

import torch
from safetensors import safe_open

from sf_core.weights.checkpoint import write_safetensors_atomic
from ..noise import SeededNoise

FORMAT_KEY = "sf_ode"


def ode_sigmas(num_steps: int = 48, shift: float = 5.0) -> torch.Tensor:
    """[num_steps + 1] float64 shifted σ of the Euler grid, from 1 down to 0."""
    base = 1 - torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    return shift * base / (1 + (shift - 1) * base)


def kept_timesteps(num_steps: int = 48, shift: float = 5.0, keep=(0, 12, 24, 36, -1)) -> list[float]:
    """Timesteps (1000·σ') of the kept trajectory states."""
    sig = ode_sigmas(num_steps, shift)
    return [float(1000 * sig[i]) for i in keep]


@torch.no_grad()
def generate_ode_trajectory(teacher, context: torch.Tensor, negative_context: torch.Tensor | None,
                            noise: torch.Tensor, num_steps: int = 48, shift: float = 5.0,
                            guidance_scale: float = 6.0, keep=(0, 12, 24, 36, -1)) -> torch.Tensor:
    """noise [B, F, C, h, w] -> kept states [B, K, F, C, h, w] (float32). The teacher runs bidirectionally."""
    if negative_context is None:
        negative_context = torch.zeros_like(context)
    sig = ode_sigmas(num_steps, shift)
    x = noise.double()
    states = [x]
    for i in range(num_steps):
        s = float(sig[i])
        t = torch.full((x.shape[0],), 1000 * s, dtype=torch.float32, device=x.device)
        xin = x.to(noise.dtype)
        x0_c = xin.double() - s * teacher(xin, t, context).double()
        x0 = x0_c
        if guidance_scale != 1:
            x0_u = xin.double() - s * teacher(xin, t, negative_context).double()
            x0 = x0_u + guidance_scale * (x0_c - x0_u)
        x = x + (float(sig[i + 1]) - s) * (x - x0) / s
        states.append(x)
    return torch.stack([states[i] for i in keep], 1).float()


def generate_ode_pairs(teacher, contexts: torch.Tensor, negative_context: torch.Tensor | None,
                       latent_shape: tuple[int, int, int, int], seed: int = 0, batch_size: int = 1,
                       num_steps: int = 48, shift: float = 5.0, guidance_scale: float = 6.0,
                       keep=(0, 12, 24, 36, -1), progress=None) -> torch.Tensor:
    """contexts [N, L, D] -> trajectories [N, K, F, C, h, w] (CPU float32).

    Item i starts from `SeededNoise(seed)(i, 0, ...)`, so any item can be regenerated alone.
    `negative_context` [L, D] or [1, L, D] is shared by all items (None: zeros).
    """
    device, dtype = contexts.device, next(teacher.parameters()).dtype
    noise, out = SeededNoise(seed), []
    for a in range(0, contexts.shape[0], batch_size):
        ctx = contexts[a:a + batch_size].to(dtype)
        eps = torch.cat([noise(i, 0, (1, *latent_shape), torch.float32, device) for i in range(a, a + ctx.shape[0])])
        neg = None if negative_context is None else negative_context.reshape(1, *negative_context.shape[-2:])
        neg = None if neg is None else neg.to(device, dtype).expand(ctx.shape[0], -1, -1)
        out.append(generate_ode_trajectory(teacher, ctx, neg, eps.to(dtype), num_steps, shift, guidance_scale,
                                           keep).cpu())
        if progress is not None:
            progress(a + ctx.shape[0], contexts.shape[0])
    return torch.cat(out)


def save_ode_pairs(path: str, latents: torch.Tensor, timesteps, context: torch.Tensor | None = None,
                   prompts: list[str] | None = None, shift: float = 5.0, num_steps: int = 48,
                   guidance_scale: float = 6.0, keep=(0, 12, 24, 36, -1), dtype=torch.float16) -> None:
    """Write [N, K, F, C, h, w] trajectories (atomically) with their timesteps and generation settings."""
    if latents.dim() != 6:
        raise ValueError(f"latents must be [N, K, F, C, h, w], got {tuple(latents.shape)}")
    tensors = {"latents": latents.detach().to("cpu", dtype).contiguous(),
               "timesteps": torch.as_tensor(list(timesteps), dtype=torch.float32)}
    if context is not None:
        tensors["context"] = context.detach().to("cpu", dtype).contiguous()
    meta = {FORMAT_KEY: json.dumps({"shift": shift, "num_steps": num_steps, "guidance_scale": guidance_scale,
                                    "keep": list(keep), "prompts": list(prompts or [])})}
    write_safetensors_atomic(tensors, path, meta)


def load_ode_pairs(path: str) -> tuple[dict[str, torch.Tensor], dict]:
    """-> (tensors {"latents", "timesteps", optional "context"}, settings dict)."""
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
        keys = set(f.keys())
        missing = {"latents", "timesteps"} - keys
        if missing or FORMAT_KEY not in meta:
            raise ValueError(f"{path}: not an ODE-pair file: missing {sorted(missing) or [FORMAT_KEY + ' metadata']}; "
                             "write it with sf_core.train.ode_pairs.save_ode_pairs")
        tensors = {k: f.get_tensor(k) for k in keys}
    if tensors["latents"].dim() != 6 or tensors["latents"].shape[1] != tensors["timesteps"].numel():
        raise ValueError(f"{path}: 'latents' {tuple(tensors['latents'].shape)} does not match 'timesteps' "
                         f"({tensors['timesteps'].numel()} points); expected [N, K, F, C, h, w]")
    return tensors, json.loads(meta[FORMAT_KEY])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m sf_core.train.ode_pairs",
                                description="Generate ODE pairs from a bidirectional Wan2.1 teacher.")
    p.add_argument("--teacher", required=True, help="teacher checkpoint (any layout sf_core.weights.checkpoint reads)")
    p.add_argument("--contexts", required=True,
                   help="safetensors with 'context' [N, L, D], optional 'negative_context' [L, D], "
                        "optional metadata 'prompts' (JSON list)")
    p.add_argument("--out", required=True)
    p.add_argument("--frames", type=int, default=21)
    p.add_argument("--latent-height", type=int, default=60)
    p.add_argument("--latent-width", type=int, default=104)
    p.add_argument("--steps", type=int, default=48)
    p.add_argument("--shift", type=float, default=5.0)
    p.add_argument("--guidance", type=float, default=6.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = p.parse_args(argv)
    from sf_core.weights.checkpoint import load_model
    teacher, _ = load_model(args.teacher, dtype=getattr(torch, args.dtype), device=args.device)
    teacher.eval().requires_grad_(False)
    with safe_open(args.contexts, framework="pt") as f:
        if "context" not in f.keys():
            raise SystemExit(f"{args.contexts}: tensor 'context' [N, L, D] missing (found {sorted(f.keys())})")
        contexts = f.get_tensor("context").to(args.device)
        negative = f.get_tensor("negative_context") if "negative_context" in f.keys() else None
        prompts = json.loads((f.metadata() or {}).get("prompts", "[]"))
    shape = (args.frames, teacher.config.in_dim, args.latent_height, args.latent_width)
    keep = (0, args.steps // 4, args.steps // 2, 3 * args.steps // 4, -1)
    traj = generate_ode_pairs(teacher, contexts, negative, shape, args.seed, args.batch_size, args.steps,
                              args.shift, args.guidance, keep,
                              progress=lambda done, n: print(f"{done}/{n}", flush=True))
    save_ode_pairs(args.out, traj, kept_timesteps(args.steps, args.shift, keep), context=contexts, prompts=prompts,
                   shift=args.shift, num_steps=args.steps, guidance_scale=args.guidance, keep=keep)
    print(f"wrote {traj.shape[0]} trajectories {tuple(traj.shape[1:])} to {args.out}")


if __name__ == "__main__":
    main()
