"""ODE pairs: the shift-5 48-step grid lands on the warped steps; Euler + CFG; file round trip; regression."""
import pytest
import torch
import torch.nn as nn

from sf_core.model import CausalWanModel
from sf_core.scheduler import FlowMatchScheduler
from sf_core.train.objectives import StepInfo, TrainBatch, build_objective
from sf_core.train.ode_pairs import (generate_ode_trajectory, kept_timesteps, load_ode_pairs, ode_sigmas,
                                     save_ode_pairs)

from sf_core.testing.tiny import TINY_DIT, randomize

SHAPE = (1, 6, TINY_DIT.in_dim, 4, 4)


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


class StraightFlow(nn.Module):
    """The exact flow of x_t = (1 − σ)·x0 + σ·ε toward a known x0: v = (x_t − x0)/σ, σ = t/1000."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0

    def forward(self, x, t, context):
        return (x - self.x0) / (t.view(-1, 1, 1, 1, 1) / 1000)


def test_kept_points_are_the_warped_inference_steps():
    kept = kept_timesteps(48, 5.0)
    warped = FlowMatchScheduler(5.0).warp([1000, 750, 500, 250])
    assert kept == pytest.approx([1000.0, 937.5, 833.3333, 625.0, 0.0], abs=1e-4)
    assert kept[:4] == pytest.approx(warped, abs=1e-4)
    assert kept_timesteps(48, 8.0)[1:4] == pytest.approx([960.0, 888.8889, 727.2727], abs=1e-3)  # the shift-8 bug
    assert ode_sigmas(48, 5.0)[0] == 1 and ode_sigmas(48, 5.0)[-1] == 0


def test_trajectory_lands_on_the_kept_noise_levels():
    """With the exact straight flow Euler is exact: point k is (1 − σ_k)·x0 + σ_k·ε,
    σ = 1, .9375, .8333, .625, 0."""
    x0, eps = _rand(*SHAPE, seed=1), _rand(*SHAPE, seed=2)
    ctx = torch.zeros(1, 5, TINY_DIT.text_dim)
    traj = generate_ode_trajectory(StraightFlow(x0), ctx, None, eps, guidance_scale=6.0)
    assert traj.shape == (1, 5, *SHAPE[1:])
    for k, sigma in enumerate([1.0, 0.9375, 5 / 6, 0.625, 0.0]):
        assert (traj[:, k] - ((1 - sigma) * x0 + sigma * eps)).abs().max() < 1e-5


def test_euler_with_cfg_matches_a_hand_computed_step():
    teacher = randomize(CausalWanModel(TINY_DIT, attention="sdpa"), 1).requires_grad_(False)
    ctx, neg, eps = _rand(1, 5, TINY_DIT.text_dim, seed=3), _rand(1, 5, TINY_DIT.text_dim, seed=4), _rand(*SHAPE, seed=5)
    traj = generate_ode_trajectory(teacher, ctx, neg, eps, num_steps=2, shift=5.0, guidance_scale=6.0,
                                   keep=(0, 1, 2))
    s0, s1 = 1.0, 5 * 0.5 / (1 + 4 * 0.5)
    t = torch.full((1,), 1000.0)
    cond = eps - s0 * teacher(eps, t, ctx)
    uncond = eps - s0 * teacher(eps, t, neg)
    x0 = uncond + 6.0 * (cond - uncond)
    x1 = eps + (s1 - s0) * (eps - x0) / s0
    assert torch.equal(traj[:, 0], eps)
    assert (traj[:, 1] - x1).abs().max() < 1e-4


def test_file_round_trip_and_bad_file(tmp_path):
    lat = _rand(2, 5, *SHAPE[1:], seed=6)
    path = tmp_path / "pairs.safetensors"
    save_ode_pairs(str(path), lat, kept_timesteps(), context=_rand(2, 5, TINY_DIT.text_dim), prompts=["a", "b"])
    tensors, meta = load_ode_pairs(str(path))
    assert tensors["latents"].dtype == torch.float16 and tensors["latents"].shape == lat.shape
    assert (tensors["latents"].float() - lat).abs().max() < 1e-2
    assert meta["shift"] == 5.0 and meta["num_steps"] == 48 and meta["keep"] == [0, 12, 24, 36, -1]
    assert meta["prompts"] == ["a", "b"] and list(tmp_path.iterdir()) == [path]
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="not an ODE-pair file"):
        load_ode_pairs(str(tmp_path / "bad.safetensors"))


def test_ode_regression_from_generated_pairs_learns(tmp_path):
    teacher = randomize(CausalWanModel(TINY_DIT, attention="sdpa"), 1).requires_grad_(False)
    ctx = _rand(1, 5, TINY_DIT.text_dim, seed=3)
    traj = generate_ode_trajectory(teacher, ctx, None, _rand(*SHAPE, seed=8), num_steps=8,
                                   keep=(0, 2, 4, 6, -1))
    save_ode_pairs(str(tmp_path / "p.safetensors"), traj, kept_timesteps(8, keep=(0, 2, 4, 6, -1)),
                   num_steps=8, keep=(0, 2, 4, 6, -1))
    tensors, _ = load_ode_pairs(str(tmp_path / "p.safetensors"))
    student = randomize(CausalWanModel(TINY_DIT, attention="sdpa"), 0)
    obj = build_objective("ode", {"latent_shape": SHAPE[1:]}, student)
    assert obj.trajectory_timesteps() == pytest.approx(tensors["timesteps"].tolist(), abs=1e-3)
    opt = torch.optim.AdamW(student.parameters(), lr=2e-3)
    batch = TrainBatch(ctx, None, ode_trajectory=tensors["latents"].float())
    losses = []
    for _ in range(8):
        info = StepInfo(0, torch.Generator().manual_seed(0), torch.Generator().manual_seed(1))
        loss, m = obj.generator_loss(batch, info)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert m["ode_noisy_frames"] > 0 and losses[-1] < 0.9 * losses[0]


def test_command_line_writes_pairs_from_a_teacher_file(tmp_path):
    from safetensors.torch import save_file
    from sf_core.weights.checkpoint import save_safetensors
    from sf_core.noise import SeededNoise
    from sf_core.train.ode_pairs import main
    teacher = randomize(CausalWanModel(TINY_DIT, attention="sdpa"), 1)
    save_safetensors(teacher, str(tmp_path / "teacher.safetensors"), model_config=TINY_DIT)
    ctx = _rand(2, 5, TINY_DIT.text_dim, seed=3)
    save_file({"context": ctx, "negative_context": _rand(5, TINY_DIT.text_dim, seed=4)}, str(tmp_path / "ctx.safetensors"),
              metadata={"prompts": '["a cat", "a dog"]'})
    main(["--teacher", str(tmp_path / "teacher.safetensors"), "--contexts", str(tmp_path / "ctx.safetensors"),
          "--out", str(tmp_path / "pairs.safetensors"), "--frames", "3", "--latent-height", "4",
          "--latent-width", "4", "--steps", "8", "--seed", "5", "--device", "cpu"])
    tensors, meta = load_ode_pairs(str(tmp_path / "pairs.safetensors"))
    assert tensors["latents"].shape == (2, 5, 3, TINY_DIT.in_dim, 4, 4) and meta["prompts"] == ["a cat", "a dog"]
    assert meta["keep"] == [0, 2, 4, 6, -1] and tensors["timesteps"].tolist() == pytest.approx(
        [1000.0, 937.5, 833.3333, 625.0, 0.0], abs=1e-3)
    first = SeededNoise(5)(1, 0, (1, 3, TINY_DIT.in_dim, 4, 4), torch.float32, "cpu")
    assert (tensors["latents"][1, 0].float() - first[0]).abs().max() < 1e-2
    assert torch.equal(tensors["context"].float(), ctx.half().float())
