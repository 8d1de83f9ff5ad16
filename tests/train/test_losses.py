"""Losses and objectives: DMD direction, critic flow loss, SiD, GAN, ODE/TF/DF; the objective contract."""
import pytest
import torch

from sf_core.model import CausalWanModel
from sf_core.scheduler import FlowMatchScheduler
from sf_core.train.losses.dmd import dmd_loss
from sf_core.train.losses.gan import FeatureDiscriminator, default_feature_layers, gan_discriminator_loss
from sf_core.train.losses.score import critic_flow_loss, sample_score_timestep
from sf_core.train.losses.sid import sid_loss
from sf_core.train.objectives import (OBJECTIVES, ObjectiveConfig, StepInfo, TrainBatch, build_objective)

from sf_core.testing.tiny import TINY_DIT, randomize

SHAPE = (6, TINY_DIT.in_dim, 4, 4)   # (frames, C, h, w): two chunks of 3 frames, 4 tokens per frame
SCHED = FlowMatchScheduler(5.0)


def _model(seed, frozen=False):
    m = randomize(CausalWanModel(TINY_DIT, attention="sdpa"), seed)
    return m.requires_grad_(not frozen)


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _batch(seed=0):
    return TrainBatch(context=_rand(1, 5, TINY_DIT.text_dim, seed=seed),
                      negative_context=_rand(1, 5, TINY_DIT.text_dim, seed=99),
                      latents=_rand(1, *SHAPE, seed=seed + 1), ode_trajectory=_rand(1, 5, *SHAPE, seed=seed + 2))


def _info(step=0):
    return StepInfo(step, torch.Generator().manual_seed(100 + step), torch.Generator().manual_seed(200 + step))


def _manual_t_and_noise(seed, x):
    """What the losses draw from a fresh generator: randint -> shift 5 -> clamp [20, 980], then ε."""
    rng = torch.Generator().manual_seed(seed)
    u = torch.randint(0, 1000, (x.shape[0],), generator=rng).double() / 1000
    t = (1000 * 5 * u / (1 + 4 * u)).clamp(20, 980).float()
    return t, torch.randn(x.shape, generator=rng)


def _x0(model, x_t, t, ctx):
    sigma = SCHED.sigma(t).double().view(-1, 1, 1, 1, 1)
    return x_t.double() - sigma * model(x_t, t, ctx).double()


def test_score_timesteps_are_shifted_and_clamped():
    t = sample_score_timestep(4000, torch.Generator().manual_seed(0))
    assert t.min() >= 20 and t.max() <= 980
    assert (t == 980).float().mean() > 0.05          # shift 5 pushes mass to high noise; clamped at 980
    assert abs(float((t < 500).float().mean()) - 1 / 6) < 0.03   # u < 1/6 <=> shifted t < 500


def test_dmd_gradient_is_the_normalised_score_difference():
    teacher, critic = _model(1, frozen=True), _model(2)
    b = _batch()
    video = _rand(1, *SHAPE, seed=5).requires_grad_(True)
    loss, _ = dmd_loss(video, b.context, b.negative_context, teacher, critic, torch.Generator().manual_seed(7),
                       SCHED, guidance_scale=3.0)
    loss.backward()
    t, eps = _manual_t_and_noise(7, video)
    sigma = SCHED.sigma(t).view(-1, 1, 1, 1, 1)
    with torch.no_grad():
        x_t = (1 - sigma) * video + sigma * eps
        fake = _x0(critic, x_t, t, b.context)
        cond, uncond = _x0(teacher, x_t, t, b.context), _x0(teacher, x_t, t, b.negative_context)
        real = uncond + 4.0 * (cond - uncond)       # = cond + 3·(cond − uncond)
        direction = (fake - real) / (video.double() - real).abs().mean()
    assert torch.allclose(video.grad.double(), direction / video.numel(), atol=1e-8, rtol=1e-4)
    assert float(loss.detach()) == pytest.approx(0.5 * float(direction.pow(2).mean()), rel=1e-6)
    assert all(p.grad is None for p in list(teacher.parameters()) + list(critic.parameters()))


def test_critic_loss_is_the_flow_matching_mse():
    critic = _model(2)
    b = _batch()
    video = _rand(1, *SHAPE, seed=6)
    loss, _ = critic_flow_loss(critic, video, b.context, torch.Generator().manual_seed(3), SCHED)
    t, eps = _manual_t_and_noise(3, video)
    sigma = SCHED.sigma(t).view(-1, 1, 1, 1, 1)
    v = critic((1 - sigma) * video + sigma * eps, t, b.context)
    assert float(loss.detach()) == pytest.approx(float(((v - (eps - video)) ** 2).mean().detach()), rel=1e-5)


def test_sid_loss_value_and_gradient_reach_only_the_sample():
    teacher, critic = _model(1, frozen=True), _model(2)
    b = _batch()
    video = _rand(1, *SHAPE, seed=5).requires_grad_(True)
    loss, _ = sid_loss(video, b.context, b.negative_context, teacher, critic, torch.Generator().manual_seed(7),
                       SCHED, alpha=1.0)
    loss.backward()
    t, eps = _manual_t_and_noise(7, video)
    sigma = SCHED.sigma(t).view(-1, 1, 1, 1, 1)
    with torch.no_grad():
        x = video.double()
        x_t = (1 - sigma) * video + sigma * eps
        fake = _x0(critic, x_t, t, b.context)
        cond, uncond = _x0(teacher, x_t, t, b.context), _x0(teacher, x_t, t, b.negative_context)
        real = cond + 3.0 * (cond - uncond)
        want = ((real - fake) * ((real - x) - (real - fake)) / (x - real).abs().mean()).mean()
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-5)
    assert video.grad is not None and torch.isfinite(video.grad).all() and video.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())   # frozen teacher: no graph into its weights


def test_gan_discriminator_reads_the_critic_features_and_learns():
    critic = _model(2)
    disc = FeatureDiscriminator.for_backbone(critic)
    assert default_feature_layers(30) == (13, 21, 29) and disc.feature_layers == (0, 1)
    opt = torch.optim.Adam(list(disc.parameters()) + list(critic.parameters()), lr=1e-3)
    fake, real, ctx = _rand(1, *SHAPE, seed=1), _rand(1, *SHAPE, seed=2) + 2.0, _rand(1, 5, TINY_DIT.text_dim)
    losses = []
    for _ in range(6):
        loss, m = gan_discriminator_loss(fake, real, ctx, critic, disc, torch.Generator().manual_seed(0), SCHED,
                                         weight=1.0, r1_weight=1e-3)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        assert torch.isfinite(torch.tensor(m["gan_r1"]))
    assert losses[-1] < losses[0]
    assert all(len(blk._forward_hooks) == 0 for blk in critic.blocks)


@pytest.mark.parametrize("name", OBJECTIVES)
def test_objective_runs_and_only_trainable_modules_get_gradients(name):
    gen, teacher, critic = _model(0), _model(1, frozen=True), _model(2)
    obj = build_objective(name, {"latent_shape": SHAPE}, gen, teacher, critic)
    mods = obj.trainable_modules()
    assert set(mods) == ({"generator", "critic", "discriminator"} if name == "gan" else
                         {"generator", "critic"} if name in ("dmd", "sid") else {"generator"})
    loss, metrics = obj.generator_loss(_batch(), _info())
    loss.backward()
    assert torch.isfinite(loss) and all(isinstance(v, float) for v in metrics.values())
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in gen.parameters())
    if name in ("dmd", "sid", "gan"):
        if name == "dmd":   # DMD's score forwards run under no_grad (SiD/GAN backprop through the critic)
            assert all(p.grad is None for p in critic.parameters())
        for m in mods.values():
            m.zero_grad(set_to_none=True)
        gen.zero_grad(set_to_none=True)
        gen_grads = [None if p.grad is None else p.grad.clone() for p in gen.parameters()]
        closs, _ = obj.critic_loss(_batch(1), _info(1))
        closs.backward()
        assert torch.isfinite(closs)
        assert all((a is None and p.grad is None) or torch.equal(a, p.grad)
                   for a, p in zip(gen_grads, gen.parameters()))
        assert any(p.grad is not None for p in critic.parameters())
    else:
        assert obj.critic_loss(_batch(), _info()) is None


@pytest.mark.parametrize("name", ["ode", "teacher_forcing", "diffusion_forcing"])
def test_parallel_objectives_decrease_under_optimisation(name):
    gen = _model(0)
    obj = build_objective(name, {"latent_shape": SHAPE}, gen)
    opt = torch.optim.Adam(gen.parameters(), lr=2e-3)
    losses = []
    for _ in range(8):
        loss, _ = obj.generator_loss(_batch(), _info())   # same draws every step: a fixed objective
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.9 * losses[0]


def test_dmd_training_steps_run_and_the_critic_fits_the_generator():
    gen, teacher, critic = _model(0), _model(1, frozen=True), _model(2)
    obj = build_objective("dmd", {"latent_shape": SHAPE, "gradient_checkpointing": True}, gen, teacher, critic)
    gopt = torch.optim.AdamW(gen.parameters(), lr=1e-4, betas=(0.0, 0.999))
    copt = torch.optim.AdamW(critic.parameters(), lr=2e-3, betas=(0.0, 0.999))
    before = [p.detach().clone() for p in gen.parameters()]
    closses = []
    for step in range(6):
        if step % 3 == 0:
            loss, _ = obj.generator_loss(_batch(step), _info(step))
            gopt.zero_grad()
            loss.backward()
            gopt.step()
            assert torch.isfinite(loss)
        closs, _ = obj.critic_loss(_batch(), _info())   # fixed draws: the critic fits one rollout
        copt.zero_grad()
        closs.backward()
        copt.step()
        closses.append(float(closs.detach()))
    assert any((a - p).abs().max() > 0 for a, p in zip(before, gen.parameters()))
    assert min(closses[3:]) < closses[0]


def test_contract_errors_and_config():
    with pytest.raises(ValueError, match="unknown objective"):
        build_objective("dmd2", {}, _model(0))
    with pytest.raises(ValueError, match="unknown objective config keys"):
        ObjectiveConfig.from_dict({"guidance": 3})
    with pytest.raises(ValueError, match="rollout_dtype"):
        ObjectiveConfig.from_dict({"rollout_dtype": "bf16"})
    with pytest.raises(ValueError, match="needs a critic"):
        build_objective("dmd", {}, _model(0))
    cfg = ObjectiveConfig.from_dict({"rolling_trick": True, "latent_shape": [21, 16, 60, 104]})
    assert cfg.rollout().rollout_window == 18 and ObjectiveConfig().rollout().rollout_window == -1
    assert ObjectiveConfig().critic_updates_per_generator == 5
    obj = build_objective("teacher_forcing", {"latent_shape": SHAPE}, _model(0))
    with pytest.raises(ValueError, match="TrainBatch.latents"):
        obj.generator_loss(TrainBatch(_rand(1, 5, TINY_DIT.text_dim), None), _info())


@pytest.mark.parametrize("name", ["dmd", "sid", "gan"])
def test_longer_rollout_is_judged_on_its_last_clip_without_its_first_chunk(name):
    """rollout_frames = 2 clips: the scores see the last clip only (teacher / critic inputs are one clip long),
    that clip equals the end of a plain rollout of 12 frames, and its first chunk carries no gradient."""
    gen, teacher, critic = _model(0), _model(1, frozen=True), _model(2)
    obj = build_objective(name, {"latent_shape": SHAPE, "rollout_frames": 12, "rolling_trick": True},
                          gen, teacher, critic)
    seen = []
    hooks = [m.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1])) for m in (teacher, critic)]
    loss, _ = obj.generator_loss(_batch(), _info())
    for h in hooks:
        h.remove()
    assert seen and set(seen) == {SHAPE[0]}
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in gen.parameters())
    video, out = obj.scored_rollout(_batch(), _info(), with_grad=True)
    assert out.video.shape[1] == 12 and torch.equal(video, out.video[:, 6:])
    assert [c.requires_grad for c in out.chunk_outputs] == [False, False, False, True]
    plain = build_objective(name, {"latent_shape": (12, *SHAPE[1:]), "rolling_trick": True,
                                   "rollout_window": obj.cfg.window()}, gen, teacher, critic)
    reference, _ = plain.scored_rollout(_batch(), _info(), with_grad=False)
    assert torch.allclose(video, reference[:, 6:], atol=1e-6)
    with pytest.raises(ValueError, match="rollout_frames"):
        build_objective(name, {"latent_shape": SHAPE, "rollout_frames": 3}, gen, teacher, critic)
