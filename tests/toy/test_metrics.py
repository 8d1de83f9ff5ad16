"""Exact toy metrics: real clips score perfectly, corruptions monotonically worse, drift is detected."""
import pytest
import torch
import torch.nn.functional as F

from sf_core.toy.metrics import accumulation, evaluate, evaluate_latents, summarize
from sf_core.toy.render import SceneBatch, background_image, render, to_latent
from sf_core.toy.world import ObjectSpec, SceneSpec, sample_scenes, scene_for

FRAMES, CLIPS = 8, 3
LEVELS = 4


def _blur(x, sigma):
    if sigma == 0:
        return x
    k = torch.exp(-torch.arange(-3, 4.0) ** 2 / (2 * sigma * sigma))
    k = (k / k.sum()).view(1, 1, 1, 7)
    y = x.reshape(-1, 1, *x.shape[-2:])
    y = F.conv2d(F.pad(y, (3, 3, 0, 0), mode="circular"), k)
    y = F.conv2d(F.pad(y, (0, 0, 3, 3), mode="circular"), k.transpose(2, 3))
    return y.view_as(x)


def _freeze(x, level):
    """Freeze the video from frame FRAMES * (1 - level / LEVELS) on."""
    start = FRAMES - level * FRAMES // LEVELS
    out = x.clone()
    out[:, start:] = x[:, start - 1:start] if start > 0 else x[:, :1]
    return out


@pytest.fixture(scope="module")
def corrupted():
    """One evaluation of every corruption at LEVELS strengths (level 0 = the real clip)."""
    scenes = sample_scenes(CLIPS, 11)
    video = render(scenes, FRAMES)                                           # [B, F, 3, H, W]
    bg = background_image(SceneBatch(scenes).background, 32, 32).unsqueeze(1)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(video.shape, generator=g)
    corruptions = {
        "noise": lambda l: video + 0.04 * l * noise,
        "colour_shift": lambda l: video + 0.06 * l * torch.tensor([1.0, -0.5, 0.3]).view(1, 1, 3, 1, 1),
        "blur": lambda l: _blur(video, 0.5 * l),
        "fade": lambda l: video + (bg - video) * (0.15 * l),           # objects still found
        "freeze": lambda l: _freeze(video, l),
    }
    clips = torch.cat([c(l) for c in corruptions.values() for l in range(LEVELS)])
    prompts = [s.prompt for s in scenes] * (len(corruptions) * LEVELS)
    metrics = evaluate(clips, prompts)
    per_level = {}
    for i, name in enumerate(corruptions):
        for l in range(LEVELS):
            lo = (i * LEVELS + l) * CLIPS
            per_level[name, l] = {k: v[lo:lo + CLIPS].nanmean().item() for k, v in metrics.clip.items()}
    return per_level


def test_real_clips_are_near_perfect(corrupted):
    m = corrupted["noise", 0]
    assert m["frame_error"] < 1e-3 and m["background_error"] < 1e-3 and m["flicker"] < 1e-3
    assert m["colour_error"] < 0.02 and m["motion_error"] < 0.2
    assert m["sharpness"] == pytest.approx(1.0, abs=0.02)
    assert m["presence"] > 0.97 and m["adherence"] > 0.97 and m["motion_accuracy"] == 1.0
    assert m["opacity"] > 0.99
    assert all(v == v for v in m.values()), "no NaN in per-clip metrics of real clips"


@pytest.mark.parametrize("corruption,metric,sign", [
    ("noise", "frame_error", 1), ("noise", "flicker", 1), ("noise", "sharpness", 1),
    ("colour_shift", "frame_error", 1), ("colour_shift", "colour_error", 1), ("colour_shift", "background_error", 1),
    ("blur", "frame_error", 1), ("blur", "sharpness", -1),
    ("fade", "frame_error", 1), ("fade", "colour_error", 1), ("fade", "opacity", -1),
    ("freeze", "motion_error", 1),
])
def test_metrics_worsen_monotonically_with_corruption(corrupted, corruption, metric, sign):
    values = [corrupted[corruption, l][metric] for l in range(LEVELS)]
    assert all(sign * (b - a) > 0 for a, b in zip(values, values[1:])), values


def test_dissolved_objects_are_missing():
    scenes = sample_scenes(3, 12)
    video = render(scenes, 4)
    bg = background_image(SceneBatch(scenes).background, 32, 32).unsqueeze(1)
    m = evaluate(video + (bg - video) * 0.8, [s.prompt for s in scenes]).clip
    assert torch.all(m["presence"] == 0) and torch.all(m["colour_accuracy"] == 0)


def test_strong_corruptions_break_adherence(corrupted):
    assert corrupted["freeze", LEVELS - 1]["motion_accuracy"] < 1.0


def test_wrong_shape_colour_and_motion_are_caught():
    prompt = "a red square moves left on a black background"
    shown = {
        "shape": "a red circle moves left on a black background",
        "colour": "a blue square moves left on a black background",
        "motion": "a red square moves right on a black background",
    }
    truth = render(scene_for(prompt, 2), FRAMES).unsqueeze(0)
    fakes = torch.cat([render(scene_for(p, 2), FRAMES).unsqueeze(0) for p in shown.values()])
    m = evaluate(torch.cat([truth, fakes]), [prompt] * 4).clip
    assert m["shape_accuracy"][0] == 1 and m["colour_accuracy"][0] == 1 and m["motion_accuracy"][0] == 1
    assert m["shape_accuracy"][1] < 0.5 and m["colour_accuracy"][2] == 0 and m["motion_accuracy"][3] == 0
    assert torch.all(m["frame_error"][1:3] > 10 * m["frame_error"][0])  # motion is invisible frame by frame
    assert m["motion_error"][3] > 10 * m["motion_error"][0]


def test_error_accumulation_separates_drift_from_constant_error():
    scenes = sample_scenes(4, 5)
    video = render(scenes, 24)
    ramp = torch.linspace(0, 1, 24).view(1, -1, 1, 1, 1)
    direction = torch.tensor([0.2, -0.2, 0.1]).view(1, 1, 3, 1, 1)
    drift = video + ramp * direction                     # colour shift growing with time
    constant = video + 0.5 * direction                   # the same shift on average, constant
    m = evaluate(torch.cat([drift, constant]), [s.prompt for s in scenes] * 2).clip
    d, c = slice(0, 4), slice(4, 8)
    assert torch.all(m["frame_error_growth"][d] > 0.05) and torch.all(m["frame_error_slope"][d] > 0.003)
    assert torch.all(m["frame_error_growth"][c].abs() < 0.01)
    assert torch.all(m["frame_error_slope"][c].abs() < 0.001)
    assert m["frame_error"][d].mean() == pytest.approx(m["frame_error"][c].mean(), rel=0.25)


def test_brightness_drift_is_measured_with_its_sign():
    scenes = sample_scenes(3, 6)
    video = render(scenes, 24) * 0.8                     # headroom so the brightening is not clamped away
    ramp = torch.linspace(0, 0.15, 24).view(1, -1, 1, 1, 1)
    m = evaluate(torch.cat([video + ramp, video - ramp, video]), [s.prompt for s in scenes] * 3,
                 ).clip
    up, down, still = slice(0, 3), slice(3, 6), slice(6, 9)
    assert torch.all(m["brightness_growth"][up] > 0.05) and torch.all(m["brightness_growth"][down] < -0.05)
    assert torch.all(m["brightness_growth"][still].abs() < 0.01)


def test_accumulation_of_known_curves():
    t = torch.arange(20.0)
    curve = torch.stack([2 + 0.5 * t, torch.full_like(t, 3.0)])
    acc = accumulation(curve, window=5)
    assert torch.allclose(acc["slope"], torch.tensor([0.5, 0.0]), atol=1e-6)
    assert torch.allclose(acc["early"], torch.tensor([3.0, 3.0]))
    assert torch.allclose(acc["growth"], torch.tensor([0.5 * 15, 0.0]), atol=1e-5)
    curve[0, 0] = float("nan")                                # NaNs are skipped, not propagated
    assert torch.allclose(accumulation(curve, window=5)["slope"][0], torch.tensor(0.5), atol=1e-6)


def test_intervals_shrink_with_more_clips():
    scenes = sample_scenes(16, 9)
    g = torch.Generator().manual_seed(1)
    video = render(scenes, 4)
    video = video + 0.1 * torch.rand(16, 1, 1, 1, 1, generator=g) * torch.randn(video.shape, generator=g)
    m = evaluate(video, [s.prompt for s in scenes])
    few = summarize(type(m)({}, {k: v[:4] for k, v in m.clip.items()}))["frame_error"]
    many = summarize(m)["frame_error"]
    assert many.n == 16 and few.n == 4
    assert many.high - many.low < 0.6 * (few.high - few.low)
    assert many.low < many.mean < many.high


def test_latents_and_spec_prompts_are_accepted():
    scenes = sample_scenes(2, 4)
    video = render(scenes, 3)
    clip = evaluate_latents(to_latent(video), [s.prompt for s in scenes]).clip
    assert not any(torch.isnan(v).any() for v in clip.values()), "short real clips: no NaN metric"
    a = clip["frame_error"]
    b = evaluate(video, [s.spec for s in scenes]).clip["frame_error"]
    assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="prompts"):
        evaluate(video, [scenes[0].prompt])
    with pytest.raises(ValueError, match=r"\[B, F, 3, H, W\]"):
        evaluate(to_latent(video), [s.prompt for s in scenes])
    spec = SceneSpec((ObjectSpec("circle", "red", "static"),), ("black", "black"))
    assert evaluate(render(scene_for(spec, 0), 2).unsqueeze(0), [spec]).clip["frame_error"][0] < 1e-3
