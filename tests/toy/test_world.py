"""Scenes, prompts, rendering and the latent map of the toy world."""
import math

import pytest
import torch

from sf_core.toy.dataset import ToyVideoDataset, sample_batch
from sf_core.toy.autoencoder import AutoencoderConfig, ToyAutoencoder
from sf_core.toy.latents import PIXELS, AutoencoderSpace
from sf_core.toy.render import (CODES, MOTION_SCALE, SceneBatch, background_image, coverage, from_latent, render,
                                render_with_codes, to_latent, trajectories, velocities)
from sf_core.toy.world import (BACKGROUND_COLOURS, EXTENT, MOTIONS, OBJECT_COLOURS, RANGES, ObjectSpec, ObjectState,
                               PromptError, Scene, SceneSpec,
                               parse_prompt, sample_scenes, scene_for)


def test_sampling_is_a_pure_function_of_the_seed():
    a, b, c = sample_scenes(20, 7), sample_scenes(20, 7), sample_scenes(20, 8)
    assert a == b
    assert a != c
    assert sample_scenes(5, 7, start=10) == a[10:15]
    assert torch.equal(render(a, 6), render(b, 6))


def test_prompt_round_trip_covers_every_word():
    scenes = sample_scenes(300, 0)
    for s in scenes:
        assert parse_prompt(s.prompt) == s.spec
    used = {o.motion for s in scenes for o in s.spec.objects}
    assert used == set(MOTIONS)
    assert {len(s.spec.objects) for s in scenes} == {1, 2, 3}
    assert any(s.spec.background[0] != s.spec.background[1] for s in scenes)


def test_prompt_text_and_errors():
    spec = SceneSpec((ObjectSpec("circle", "red", "left"), ObjectSpec("square", "orange", "orbit")),
                     ("black", "navy"))
    assert spec.prompt == "a red circle moves left and an orange square orbits on a black to navy gradient"
    assert parse_prompt("  a  red circle moves left and an orange square orbits on a black to navy gradient") == spec
    with pytest.raises(PromptError, match="unknown background"):
        parse_prompt("a red circle moves left on a pink background")
    with pytest.raises(PromptError, match="cannot read object"):
        parse_prompt("a red hexagon moves left on a black background")
    with pytest.raises(PromptError, match="distinct"):
        parse_prompt("a red circle moves left and a red square pulses on a black background")


def test_scene_for_prompt_realises_the_prompt():
    prompt = "a blue triangle pulses, a green circle orbits and a white square moves up on a gray background"
    scene = scene_for(prompt, seed=3)
    assert scene.prompt == prompt and scene == scene_for(prompt, seed=3) and scene != scene_for(prompt, seed=4)


def test_render_shape_range_and_start_frame():
    scenes = sample_scenes(4, 1)
    video = render(scenes, 12, height=32, width=48)
    assert video.shape == (4, 12, 3, 32, 48) and video.dtype == torch.float32
    assert video.min() >= 0 and video.max() <= 1
    late = render(scenes, 4, start_frame=8, height=32, width=48)
    assert torch.allclose(late, video[:, 8:], atol=1e-5)


def test_motions_move_as_named():
    def scene(motion):
        return scene_for(SceneSpec((ObjectSpec("circle", "red", motion),), ("black", "black")), seed=0)
    t = torch.arange(3.0)
    for motion, axis, sign in (("left", 0, -1), ("right", 0, 1), ("up", 1, -1), ("down", 1, 1)):
        s = scene(motion)
        pos = trajectories(SceneBatch([s]), t)[axis][0, 0]
        step = (pos[1] - pos[0] + 0.5) % 1 - 0.5
        assert step * sign == pytest.approx(s.states[0].speed, abs=1e-6)
    x, y, r = trajectories(SceneBatch([scene("static")]), t)
    assert torch.all(x == x[..., :1]) and torch.all(y == y[..., :1]) and torch.all(r == r[..., :1])
    x, y, r = trajectories(SceneBatch([scene("pulse")]), torch.arange(40.0))
    assert torch.all(x == x[..., :1]) and r.max() - r.min() > RANGES["pulse_amplitude"][0]
    x, y, r = trajectories(SceneBatch([scene("orbit")]), torch.arange(40.0))
    dist = torch.sqrt((x - 0.5) ** 2 + (y - 0.5) ** 2)
    assert torch.allclose(dist, dist[..., :1], atol=1e-5)


def test_object_appears_where_its_trajectory_says():
    s = scene_for("a red square stays still on a black background", seed=5)
    img = render(s, 1, height=64, width=64)[0]                          # [3, H, W]
    red = (img[0] > 0.5).float()
    ys, xs = torch.nonzero(red, as_tuple=True)
    assert (xs.float() + 0.5).mean() / 64 == pytest.approx(s.states[0].x, abs=0.01)
    assert (ys.float() + 0.5).mean() / 64 == pytest.approx(s.states[0].y, abs=0.01)
    assert red.sum() == pytest.approx(math.pi * (s.states[0].size * 64) ** 2, rel=0.05)  # equal-area sizes


def test_long_renders_stay_in_frame_forever():
    scenes = sample_scenes(24, 2)
    batch = SceneBatch(scenes)
    t = torch.cat([torch.arange(0.0, 2000.0, 41.0), torch.tensor([1e5, 1e6 + 0.5])])
    x, y, r = trajectories(batch, t)
    present = (batch.shape >= 0)[..., None].expand_as(x)
    assert torch.all((x >= 0) & (x < 1) & (y >= 0) & (y < 1))
    assert torch.all(r[present] >= RANGES["size"][0] - RANGES["pulse_amplitude"][1] - 1e-6)
    assert torch.all(r[present] <= RANGES["pulse_size"][1] + RANGES["pulse_amplitude"][1] + 1e-6)
    bounded = present & ((batch.motion == MOTIONS.index("orbit")) | (batch.motion == MOTIONS.index("static"))
                         | (batch.motion == MOTIONS.index("pulse")))[..., None]
    margin = (EXTENT * r)[bounded]
    assert torch.all(x[bounded] - margin >= -1e-6) and torch.all(x[bounded] + margin <= 1 + 1e-6)
    assert torch.all(y[bounded] - margin >= -1e-6) and torch.all(y[bounded] + margin <= 1 + 1e-6)
    # the whole object is always on screen (the frame is a torus): its rendered area is pi * size^2
    cover = coverage(x, y, r, batch.shape, 48, 48).sum((-1, -2))             # [B, K, T] pixels
    expected = math.pi * (r * 48) ** 2
    assert torch.allclose(cover[present], expected[present], rtol=0.03, atol=3.0)
    assert torch.isfinite(render(scenes[:4], 2, start_frame=10 ** 6)).all()


def test_latent_map_is_exactly_invertible():
    video = render(sample_scenes(3, 0), 5)
    latent = to_latent(video)
    assert latent.shape == (3, 5, 12, 16, 16)
    assert latent.min() >= -1 and latent.max() <= 1
    assert torch.allclose(from_latent(latent), video, atol=1e-6)
    assert torch.equal(to_latent(from_latent(latent)), latent)
    with pytest.raises(ValueError, match="12 channels"):
        from_latent(torch.zeros(1, 16, 8, 8))


def test_dataset_items_match_batches():
    ds = ToyVideoDataset(num_frames=4, size=10, seed=3)
    prompts, latents = sample_batch(3, 4, seed=3, start=2)
    for i in range(3):
        p, clip = ds[2 + i]
        assert p == prompts[i] and torch.equal(clip, latents[i])
    assert len(ds) == 10
    with pytest.raises(IndexError):
        ds[10]


def test_footprint_maps_a_pixel_to_its_latent_frame_and_cell():
    space = AutoencoderSpace(ToyAutoencoder(AutoencoderConfig(4, 8, 0.0, 8, 1)))   # stride 8 × 4
    mask = torch.zeros(1, 13, 32, 32, dtype=torch.bool)
    mask[0, 5, 9, 17] = True                      # pixel frame 5 belongs to latent frame 2 (frames 5..8)
    foot = space.footprint(mask)
    assert foot.shape == (1, 4, 4, 4) and foot.sum() == 1 and foot[0, 2, 1, 2]
    mask[0, 0, 31, 0] = True                      # frame 0 is encoded alone
    assert space.footprint(mask)[0, 0, 3, 0] and space.footprint(mask).sum() == 2
    assert torch.equal(PIXELS.footprint(mask)[0, 5], mask[0, 5].view(16, 2, 16, 2).any(3).any(1))


def test_object_footprint_is_where_the_frames_differ_from_the_background():
    prompts, latents, objects = sample_batch(4, 5, seed=7, start=3, height=32, width=32, with_objects=True)
    assert torch.equal(sample_batch(4, 5, seed=7, start=3, height=32, width=32)[1], latents)
    frames = render(sample_scenes(4, 7, 3), 5, height=32, width=32)
    bg = background_image(SceneBatch(sample_scenes(4, 7, 3)).background, 32, 32)
    differs = (frames != bg.unsqueeze(1)).any(2)                                   # [B, T, H, W]
    assert objects.dtype == torch.bool and torch.equal(objects, PIXELS.footprint(differs))
    assert 0.05 < objects.float().mean() < 0.6


def test_visible_shape_coverage_is_what_the_composite_shows_of_each_shape():
    spec = SceneSpec((ObjectSpec("square", "red", "static"), ObjectSpec("circle", "blue", "right"),
                      ObjectSpec("triangle", "white", "static")), ("navy", "navy"))
    scene = Scene(spec, (ObjectState(x=0.4, y=0.5, size=0.14), ObjectState(x=0.45, y=0.5, size=0.12, speed=0.02),
                         ObjectState(x=0.8, y=0.2, size=0.1)))    # the circle half in front of the square
    video, codes = render_with_codes([scene], 6, height=32, width=32)      # [1, 6, 3 | 9, 32, 32]
    assert codes.shape == (1, 6, len(CODES), 32, 32)
    assert torch.equal(video, render([scene], 6, height=32, width=32))
    shapes = codes[:, :, :3]
    # the composite is the background where no shape shows plus each shape's colour where it shows
    colours = torch.tensor([OBJECT_COLOURS[name] for name in ("blue", "red", "white")])   # circle, square, triangle
    background = torch.tensor(BACKGROUND_COLOURS["navy"]).view(3, 1, 1)
    rebuilt = background * (1 - shapes.sum(2, keepdim=True)) + torch.einsum("bfshw,sc->bfchw", shapes, colours)
    torch.testing.assert_close(rebuilt, video, atol=1e-5, rtol=0)
    assert shapes.min() >= 0 and shapes.sum(2).max() <= 1 + 1e-6
    covered = coverage(*trajectories(SceneBatch([scene]), torch.arange(6)), SceneBatch([scene]).shape, 32, 32)
    assert shapes[:, :, 1].sum() < covered[:, 0].sum() - 20          # the square is partly hidden (> 20 px)
    torch.testing.assert_close(shapes[:, :, 0], covered[:, 1])         # the circle in front shows whole


def test_velocities_are_the_derivatives_of_the_trajectories():
    scenes = [scene_for(SceneSpec((ObjectSpec("circle", "red", m),), ("black", "black")), seed=3) for m in MOTIONS]
    batch, t, h = SceneBatch(scenes), torch.arange(0.0, 30.0), 1e-3
    ahead, behind = trajectories(batch, t + h), trajectories(batch, t - h)
    numeric = torch.stack([((a.double() - b.double() + 0.5) % 1 - 0.5) / (2 * h) if i < 2
                           else (a.double() - b.double()) / (2 * h)
                           for i, (a, b) in enumerate(zip(ahead, behind))], -1)   # [B, K, F, 3], torus-wrapped
    exact = velocities(batch, t)
    torch.testing.assert_close(exact.double(), numeric, atol=2e-4, rtol=0)    # float32 positions over 2e-3
    moving = {m: exact[i, 0].abs().amax(0) > 0 for i, m in enumerate(MOTIONS)}
    assert moving["static"].tolist() == [False] * 3 and moving["left"].tolist() == [True, False, False]
    assert moving["up"].tolist() == [False, True, False] and moving["pulse"].tolist() == [False, False, True]
    assert moving["orbit"].tolist() == [True, True, False]


def test_the_motion_codes_say_how_the_visible_pixels_move():
    spec = SceneSpec((ObjectSpec("square", "red", "left"), ObjectSpec("circle", "blue", "static")), ("navy", "navy"))
    scene = Scene(spec, (ObjectState(x=0.4, y=0.5, size=0.14, speed=0.03), ObjectState(x=0.5, y=0.5, size=0.1)))
    _, codes = render_with_codes([scene], 4, height=32, width=32)
    vx, vy, growth = codes[0, :, 3], codes[0, :, 4], codes[0, :, 5]
    square = codes[0, :, 1]
    assert vy.abs().max() == 0 and growth.abs().max() == 0
    torch.testing.assert_close(vx, -0.03 / MOTION_SCALE[0] * square)     # where the square shows, at its speed
    assert (vx[codes[0, :, 0] > 0.999] == 0).all()                       # the static circle in front hides it


def test_the_object_codes_say_which_prompt_object_each_pixel_shows():
    spec = SceneSpec((ObjectSpec("circle", "red", "static"), ObjectSpec("circle", "green", "right")), ("gray", "gray"))
    scene = Scene(spec, (ObjectState(x=0.4, y=0.5, size=0.14), ObjectState(x=0.5, y=0.5, size=0.12, speed=0.03)))
    video, codes = render_with_codes([scene], 4, height=32, width=32)
    first, second, third = codes[0, :, 6], codes[0, :, 7], codes[0, :, 8]
    assert third.abs().max() == 0                                           # a two-object prompt has no object 3
    # the same shape, so the shape code cannot tell them apart; the object code does, in prompt order
    torch.testing.assert_close(first + second, codes[0, :, 0])
    covered = coverage(*trajectories(SceneBatch([scene]), torch.arange(4)), SceneBatch([scene]).shape, 32, 32)[0]
    torch.testing.assert_close(second, covered[1])                          # the second is composited in front
    torch.testing.assert_close(first, covered[0] * (1 - covered[1]))       # and hides part of the first
    red = torch.tensor(OBJECT_COLOURS["red"]).view(3, 1, 1)
    assert ((video[0] - red).abs().amax(1) < 1e-6)[first > 0.999].all()     # where object 1 shows, red shows
    assert first.sum() < covered[0].sum() - 20 and second.min() >= 0 and (first + second).max() <= 1 + 1e-6
