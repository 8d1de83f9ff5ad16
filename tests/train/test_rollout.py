"""Self-rollout: equals inference when configured alike; gradient only through exit steps; rolling trick."""
import pytest
import torch

from sf_core.cache import KVCache
from sf_core.config import StreamConfig
from sf_core.model import CausalWanModel
from sf_core.noise import SeededNoise
from sf_core.pipeline import StreamingPipeline
from sf_core.scheduler import FlowMatchScheduler
from sf_core.train.rollout import RolloutConfig, draw_exit_steps, rolling_trick_window, self_rollout

from sf_core.testing.tiny import TINY_DIT, randomize

LATENT = (TINY_DIT.in_dim, 4, 4)   # 32×32 pixels -> 4×4 latent -> 4 tokens per frame


def _ctx(seed=0, batch=1):
    return torch.randn(batch, 5, TINY_DIT.text_dim, generator=torch.Generator().manual_seed(seed))


def _model(seed=0):
    return randomize(CausalWanModel(TINY_DIT, attention="sdpa"), seed)


def _rollout(model, cfg, exits, noise, with_grad=True, ctx=None):
    return self_rollout(model, _ctx() if ctx is None else ctx, LATENT, cfg, torch.Generator(), noise,
                        with_grad=with_grad, exit_steps=exits)


@pytest.mark.parametrize("chunk,frames,window,sink", [(3, 12, -1, 0), (1, 4, -1, 0), (3, 12, 6, 0),
                                                      (3, 12, 7, 1)])
def test_rollout_equals_inference_pipeline(tiny_model, chunk, frames, window, sink):
    """Exit at the last step, exact cache pass: the rollout is the streaming pipeline (incl. rolling caches)."""
    noise = SeededNoise(4)
    cfg = RolloutConfig(num_frames=frames, chunk_frames=chunk, training_cache_noise=False,
                        rollout_window=window, rollout_sink=sink)
    out = _rollout(tiny_model, cfg, [3] * cfg.num_chunks, noise, with_grad=False)
    pipe = StreamingPipeline(tiny_model, StreamConfig(chunk_frames=chunk, window=window, sink=sink))
    state = pipe.start(_ctx(), 32, 32, noise=noise, max_frames=frames)
    ref = torch.cat([c.latents for c in pipe.stream(state, cfg.num_chunks)], 1)
    assert out.video.shape == ref.shape == (1, frames, *LATENT)
    assert (out.video - ref).abs().max() < 1e-5


def test_training_cache_pass_adds_the_official_sigma_noise(tiny_model):
    seen = []
    hook = tiny_model.register_forward_pre_hook(lambda m, args: seen.append((args[0].clone(), args[1].clone())))
    noise = SeededNoise(1)
    cfg = RolloutConfig(num_frames=6, training_cache_noise=True)
    out = _rollout(tiny_model, cfg, [1, 1], noise, with_grad=False)
    hook.remove()
    # per chunk: 2 denoising calls then the cache pass
    x_cache, t_cache = seen[2]
    sigma = 0.00498  # smallest grid σ at shift 5 (t = 0 snaps to t = 4.98)
    expected = (1 - sigma) * out.video[:, :3] + sigma * noise(0, 4, (1, 3, *LATENT), torch.float32, "cpu")
    assert torch.all(t_cache == 0)
    assert (x_cache - expected).abs().max() < 1e-5
    assert (x_cache - out.video[:, :3]).abs().max() > 1e-4


def test_gradient_flows_only_through_exit_steps(tiny_model):
    calls = []

    def record(m, args, output):
        calls.append((torch.is_grad_enabled(), output.requires_grad, int(args[4]), float(args[1].flatten()[0])))

    tiny_model.requires_grad_(True)
    hook = tiny_model.register_forward_hook(record)
    cfg = RolloutConfig(num_frames=9, same_step_across_blocks=False)
    exits = [2, 0, 3]
    out = _rollout(tiny_model, cfg, exits, SeededNoise(0))
    hook.remove()
    steps = FlowMatchScheduler(5.0).warp([1000, 750, 500, 250])
    # exactly one graph-building forward per chunk, at that chunk's exit timestep
    graph_calls = [(start, t) for grad, req, start, t in calls if req]
    assert graph_calls == [(3 * k, pytest.approx(steps[s])) for k, s in enumerate(exits)]
    # per chunk: `exit` no-grad steps, the exit step, one no-grad cache pass
    assert len(calls) == sum(s + 2 for s in exits)
    assert all(not grad for grad, req, _, _ in calls if not req)
    # a chunk's output does not depend (in the graph) on earlier chunks' outputs
    for k in range(1, 3):
        for j in range(k):
            g = torch.autograd.grad(out.chunk_outputs[k].sum(), out.chunk_outputs[j], retain_graph=True,
                                    allow_unused=True)[0]
            assert g is None
    # every chunk reaches the parameters through its own exit step
    for k in range(3):
        grads = torch.autograd.grad(out.chunk_outputs[k].pow(2).sum(), list(tiny_model.parameters()),
                                    retain_graph=True, allow_unused=True)
        assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    assert torch.equal(out.exit_timesteps[0], torch.tensor([steps[2]] * 3 + [steps[0]] * 3 + [steps[3]] * 3))


def test_parameter_gradient_equals_detached_context_reference():
    """Gradient of the rollout = sum over chunks of each exit-step forward against a detached cache."""
    model = _model(3)
    cfg = RolloutConfig(num_frames=9, training_cache_noise=False)
    exits, noise, ctx = [1, 1, 1], SeededNoise(5), _ctx(2)
    weights = torch.randn(1, 9, *LATENT, generator=torch.Generator().manual_seed(9))
    out = _rollout(model, cfg, exits, noise, ctx=ctx)
    got = torch.autograd.grad((out.video * weights).sum(), list(model.parameters()))

    # reference with the engine's own KVCache (which detaches cached context under autograd)
    sched, steps = FlowMatchScheduler(5.0), FlowMatchScheduler(5.0).warp([1000, 750, 500, 250])
    cache = KVCache.allocate(TINY_DIT, 1, 4, 9)
    shape, total = (1, 3, *LATENT), 0
    for k in range(3):
        x = noise(k, 0, shape, torch.float32, "cpu")
        with torch.no_grad():
            t = torch.full((1, 3), steps[0])
            x0 = sched.to_x0(x, model(x, t, ctx, cache, 3 * k), t)
            x = sched.add_noise(x0, noise(k, 1, shape, torch.float32, "cpu"), torch.full((1, 3), steps[1]))
        t = torch.full((1, 3), steps[1])
        x0 = sched.to_x0(x, model(x, t, ctx, cache, 3 * k), t)
        total = total + (x0 * weights[:, 3 * k:3 * k + 3]).sum()
        with torch.no_grad():
            model(x0, torch.zeros(1, 3), ctx, cache, 3 * k)
    want = torch.autograd.grad(total, list(model.parameters()))
    for a, b in zip(got, want):
        assert (a - b).abs().max() <= 1e-4 * (1 + b.abs().max())


def test_gradient_checkpointing_gives_identical_gradients():
    model = _model(1)
    grads = []
    for ckpt in (False, True):
        cfg = RolloutConfig(num_frames=9, gradient_checkpointing=ckpt, rollout_window=6)
        out = _rollout(model, cfg, [2, 2, 2], SeededNoise(2))
        grads.append(torch.autograd.grad(out.video.pow(2).sum(), list(model.parameters())))
    for a, b in zip(*grads):
        assert (a - b).abs().max() <= 1e-5 * (1 + b.abs().max())


class _CheckpointedBlock(torch.nn.Module):
    """Per-transformer-block activation checkpointing, as a training loop may apply it."""

    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, *args, **kwargs):
        return torch.utils.checkpoint.checkpoint(self.block, *args, use_reentrant=False, **kwargs)


def test_per_transformer_block_checkpointing_is_consistent_with_the_cache():
    plain, wrapped = _model(1), _model(1)
    wrapped.blocks = torch.nn.ModuleList(_CheckpointedBlock(b) for b in wrapped.blocks)
    grads = []
    for model in (plain, wrapped):
        out = _rollout(model, RolloutConfig(num_frames=9, rollout_window=6), [1, 1, 1], SeededNoise(2))
        grads.append(torch.autograd.grad(out.video.pow(2).sum(), list(model.parameters())))
    for a, b in zip(*grads):
        assert (a - b).abs().max() <= 1e-5 * (1 + b.abs().max())


def _last_chunk_with_perturbed_first_chunk(model, cfg, frames_to_perturb):
    """Output of the last chunk when the cached K/V of some early frames are overwritten just before it."""
    last = cfg.num_frames - cfg.chunk_frames

    def perturb(m, args):
        cache, start = args[3], args[4]
        if cache is not None and start == last and not getattr(cache, "_hit", False):
            for f in frames_to_perturb:
                cache.k[:, :, 4 * f:4 * (f + 1)] += 3.0
                cache.v[:, :, 4 * f:4 * (f + 1)] -= 3.0
            cache._hit = True

    hook = model.register_forward_pre_hook(perturb) if frames_to_perturb else None
    out = _rollout(model, cfg, [3] * cfg.num_chunks, SeededNoise(7), with_grad=False)
    if hook:
        hook.remove()
    return out.video[:, last:]


def test_rolling_trick_hides_the_first_chunk_from_the_last(tiny_model):
    assert rolling_trick_window(9, 3) == 6 and rolling_trick_window(21, 3) == 18
    for window, changes in ((-1, True), (rolling_trick_window(9, 3), False)):
        cfg = RolloutConfig(num_frames=9, rollout_window=window)
        clean = _last_chunk_with_perturbed_first_chunk(tiny_model, cfg, [])
        hit = _last_chunk_with_perturbed_first_chunk(tiny_model, cfg, [0, 1, 2])
        assert ((clean - hit).abs().max() > 1e-3) == changes
        # the middle chunk stays visible either way
        mid = _last_chunk_with_perturbed_first_chunk(tiny_model, cfg, [3])
        assert (clean - mid).abs().max() > 1e-3


def test_rolling_trick_keeps_the_sink_visible(tiny_model):
    cfg = RolloutConfig(num_frames=9, rollout_window=rolling_trick_window(9, 3, sink=1), rollout_sink=1)
    clean = _last_chunk_with_perturbed_first_chunk(tiny_model, cfg, [])
    assert (clean - _last_chunk_with_perturbed_first_chunk(tiny_model, cfg, [1, 2])).abs().max() == 0
    assert (clean - _last_chunk_with_perturbed_first_chunk(tiny_model, cfg, [0])).abs().max() > 1e-3


def test_exit_step_draw_is_shared_uniform_and_configurable():
    cfg = RolloutConfig(num_frames=21)
    a = draw_exit_steps(cfg, torch.Generator().manual_seed(3))
    assert a == draw_exit_steps(cfg, torch.Generator().manual_seed(3))
    assert len(set(a)) == 1 and len(a) == 7
    seen = {draw_exit_steps(cfg, torch.Generator().manual_seed(s))[0] for s in range(60)}
    assert seen == {0, 1, 2, 3}
    per_block = RolloutConfig(num_frames=21, same_step_across_blocks=False)
    assert any(len(set(draw_exit_steps(per_block, torch.Generator().manual_seed(s)))) > 1 for s in range(5))
    last = RolloutConfig(num_frames=21, last_step_only=True, same_step_across_blocks=False)
    assert draw_exit_steps(last, torch.Generator().manual_seed(0)) == [3] * 7


def test_bad_configuration_is_rejected():
    with pytest.raises(ValueError, match="multiple of chunk_frames"):
        RolloutConfig(num_frames=10)
    with pytest.raises(ValueError, match="rollout_window"):
        RolloutConfig(num_frames=9, rollout_window=3, rollout_sink=1)
    with pytest.raises(ValueError, match="exit_steps"):
        self_rollout(_model(), _ctx(), LATENT, RolloutConfig(num_frames=6), torch.Generator(), SeededNoise(0),
                     exit_steps=[0])


def _draw_on_rank(rank, world, store_path, out_path):
    import torch.distributed as dist
    dist.init_process_group("gloo", rank=rank, world_size=world, store=dist.FileStore(store_path, world))
    try:
        # deliberately different shared seeds: the broadcast from rank 0 must win
        steps = draw_exit_steps(RolloutConfig(num_frames=21, same_step_across_blocks=False),
                                torch.Generator().manual_seed(rank * 1000 + 1))
        torch.save(torch.tensor(steps), f"{out_path}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_exit_steps_are_broadcast_from_rank_0(tmp_path):
    import torch.multiprocessing as mp
    out = str(tmp_path / "steps")
    mp.spawn(_draw_on_rank, args=(2, str(tmp_path / "store"), out), nprocs=2, join=True)
    got = [torch.load(f"{out}.{r}", weights_only=True).tolist() for r in range(2)]
    rank0 = draw_exit_steps(RolloutConfig(num_frames=21, same_step_across_blocks=False),
                            torch.Generator().manual_seed(1))
    assert got[0] == got[1] == rank0
    assert rank0 != draw_exit_steps(RolloutConfig(num_frames=21, same_step_across_blocks=False),
                                    torch.Generator().manual_seed(1001))


def test_bfloat16_rollout():
    """bf16 weights: bf16 noise and cache (the official training precision); gradient reaches the weights."""
    model = _model(1).to(torch.bfloat16)
    out = self_rollout(model, _ctx().bfloat16(), LATENT, RolloutConfig(num_frames=6, rollout_window=3),
                       torch.Generator().manual_seed(0), SeededNoise(0))
    assert out.video.dtype == torch.bfloat16
    grads = torch.autograd.grad(out.video.float().pow(2).sum(), list(model.parameters()))
    assert all(torch.isfinite(g).all() for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0


def test_lora_without_context_adapters_backpropagates_through_rollout():
    """Frozen cross-attention K/V (LoRA only on the FFN) must still train: nothing cached is saved for backward."""
    from sf_core.train.lora import inject_lora
    model = _model()
    inject_lora(model, rank=2, alpha=4.0, targets=("ffn.0",))
    cfg = RolloutConfig(num_frames=6, chunk_frames=3)
    out = _rollout(model, cfg, [3, 3], SeededNoise(1))
    out.video.square().mean().backward()
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_grad_frames_builds_a_graph_only_for_the_last_chunks(tiny_model):
    tiny_model.requires_grad_(True)
    exits = [1, 2, 0, 3]
    full = _rollout(tiny_model, RolloutConfig(num_frames=12, same_step_across_blocks=False), exits, SeededNoise(2))
    cfg = RolloutConfig(num_frames=12, same_step_across_blocks=False, grad_frames=6)
    out = _rollout(tiny_model, cfg, exits, SeededNoise(2))
    assert cfg.first_grad_chunk == 2
    assert [c.requires_grad for c in out.chunk_outputs] == [False, False, True, True]
    assert all(c.requires_grad for c in full.chunk_outputs)
    assert torch.allclose(out.video, full.video.detach(), atol=1e-6)
    for bad in (4, 15, 0):
        with pytest.raises(ValueError, match="grad_frames"):
            RolloutConfig(num_frames=12, grad_frames=bad)
