"""A procedural video world: scenes, prompts, motions and a training dataset.

A scene is 1-3 objects (circle / square / triangle, one colour each from a bright palette) on a dark
plain or vertical-gradient background. Each object has one motion that is defined for every frame
t >= 0, so a scene can be rendered arbitrarily long and nothing ever leaves the frame:

- ``static``             stays still;
- ``left/right/up/down`` constant speed, the frame is a torus (what leaves one side re-enters opposite);
- ``orbit``              constant angular speed on a circle around the frame centre;
- ``pulse``              stays in place, its size oscillates sinusoidally (grows and shrinks).

The prompt names everything that is discrete (shape, colour, motion, background); the continuous
"nuisance" parameters (position, speed, phase, size) are drawn from a seed within documented ranges
(:data:`RANGES`). :func:`parse_prompt` / :meth:`SceneSpec.prompt` are exact inverses, and every
:class:`Scene` has one exact rendering (:func:`sf_core.toy.render.render`).

Coordinates are normalised: x in [0, 1) across the width, y in [0, 1) down the height; sizes are in
units of min(H, W). One toy frame is one latent frame; :data:`FPS` is the nominal frame rate for export.
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

from sf_core.text.limits import quote

FPS = 8

SHAPES = ("circle", "square", "triangle")
OBJECT_COLOURS = {
    "red": (0.92, 0.12, 0.10), "green": (0.15, 0.80, 0.20), "blue": (0.15, 0.35, 0.95),
    "yellow": (0.95, 0.88, 0.15), "cyan": (0.15, 0.85, 0.90), "magenta": (0.90, 0.20, 0.85),
    "white": (0.97, 0.97, 0.97), "orange": (0.98, 0.55, 0.10),
}
BACKGROUND_COLOURS = {
    "black": (0.04, 0.04, 0.04), "gray": (0.38, 0.38, 0.38), "navy": (0.05, 0.09, 0.35),
    "teal": (0.04, 0.28, 0.28), "maroon": (0.33, 0.05, 0.09), "olive": (0.28, 0.28, 0.05),
    "purple": (0.24, 0.07, 0.33),
}
MOTIONS = ("static", "left", "right", "up", "down", "orbit", "pulse")
MOTION_PHRASES = {
    "static": "stays still", "left": "moves left", "right": "moves right", "up": "moves up",
    "down": "moves down", "orbit": "orbits", "pulse": "pulses",
}
MAX_OBJECTS = 3

# Nuisance ranges (normalised units, per frame). Metrics fit trajectories within exactly these ranges.
RANGES = {
    "size": (0.09, 0.14),            # equal-area radius: every shape covers pi * size^2
    "speed": (0.02, 0.045),          # left/right/up/down, frame widths per frame
    "orbit_radius": (0.16, 0.26),    # distance of the centre from the frame centre
    "orbit_omega": (2 * math.pi / 48, 2 * math.pi / 20),   # |rad per frame|, either direction
    "pulse_size": (0.10, 0.13),      # mean size of a pulsing object
    "pulse_amplitude": (0.03, 0.05),
    "pulse_omega": (2 * math.pi / 32, 2 * math.pi / 12),
}
SIZE_LIMITS = (RANGES["pulse_size"][0] - RANGES["pulse_amplitude"][1],   # every size any frame can show
               max(RANGES["size"][1], RANGES["pulse_size"][1] + RANGES["pulse_amplitude"][1]))
EXTENT = 1.6  # furthest point of any shape from its centre, in sizes (triangle circumradius 1.555)


@dataclass(frozen=True)
class ObjectSpec:
    shape: str
    colour: str
    motion: str

    def phrase(self) -> str:
        article = "an" if self.colour[0] in "aeiou" else "a"
        return f"{article} {self.colour} {self.shape} {MOTION_PHRASES[self.motion]}"


@dataclass(frozen=True)
class SceneSpec:
    """The discrete content of a scene: exactly what its prompt says."""

    objects: tuple[ObjectSpec, ...]
    background: tuple[str, str]      # (top, bottom) colour names; equal = plain background

    @property
    def prompt(self) -> str:
        phrases = [o.phrase() for o in self.objects]
        text = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
        top, bottom = self.background
        bg = f"on a {top} background" if top == bottom else f"on a {top} to {bottom} gradient"
        return f"{text} {bg}"


@dataclass(frozen=True)
class ObjectState:
    """Continuous parameters of one object (normalised units; angles in radians, per frame)."""

    x: float = 0.5
    y: float = 0.5
    size: float = 0.1
    speed: float = 0.0       # left/right/up/down
    omega: float = 0.0       # orbit (signed) and pulse (positive)
    phase: float = 0.0       # orbit angle / pulse phase at t = 0
    radius: float = 0.0      # orbit radius
    amplitude: float = 0.0   # pulse amplitude


@dataclass(frozen=True)
class Scene:
    spec: SceneSpec
    states: tuple[ObjectState, ...]

    @property
    def prompt(self) -> str:
        return self.spec.prompt


class PromptError(ValueError):
    """A prompt is not in the toy grammar."""


_OBJECT_RE = re.compile(
    r"^an? (?P<colour>\w+) (?P<shape>\w+) (?P<motion>stays still|moves left|moves right|moves up|"
    r"moves down|orbits|pulses)$")
_BACKGROUND_RE = re.compile(r"^(?P<objects>.+) on a (?:(?P<plain>\w+) background|"
                            r"(?P<top>\w+) to (?P<bottom>\w+) gradient)$")
_MOTION_BY_PHRASE = {v: k for k, v in MOTION_PHRASES.items()}


def parse_prompt(text: str) -> SceneSpec:
    """Inverse of :attr:`SceneSpec.prompt`; raises :class:`PromptError` with the grammar on mismatch."""
    grammar = ("expected '<object>[, <object>] [and <object>] on a <bg> background' or '... on a <bg> to "
               f"<bg> gradient', object = 'a <colour> <shape> <motion>'; colours {sorted(OBJECT_COLOURS)}, "
               f"shapes {list(SHAPES)}, motions {list(MOTION_PHRASES.values())}, backgrounds "
               f"{sorted(BACKGROUND_COLOURS)}")
    m = _BACKGROUND_RE.match(" ".join(text.strip().split()))
    if not m:
        raise PromptError(f"toy prompt {quote(text)}: no background phrase; {grammar}")
    top, bottom = (m["plain"], m["plain"]) if m["plain"] else (m["top"], m["bottom"])
    for name in (top, bottom):
        if name not in BACKGROUND_COLOURS:
            raise PromptError(f"toy prompt {quote(text)}: unknown background colour {name!r}; {grammar}")
    head, _, last = m["objects"].rpartition(" and ")
    parts = (head.split(", ") if head else []) + [last]
    if len(parts) > MAX_OBJECTS:
        raise PromptError(f"toy prompt {quote(text)}: {len(parts)} objects, at most {MAX_OBJECTS}")
    objects = []
    for part in parts:
        o = _OBJECT_RE.match(part)
        if not o or o["colour"] not in OBJECT_COLOURS or o["shape"] not in SHAPES:
            raise PromptError(f"toy prompt {quote(text)}: cannot read object {part!r}; {grammar}")
        objects.append(ObjectSpec(o["shape"], o["colour"], _MOTION_BY_PHRASE[o["motion"]]))
    if len({o.colour for o in objects}) != len(objects):
        raise PromptError(f"toy prompt {quote(text)}: object colours must be distinct")
    return SceneSpec(tuple(objects), (top, bottom))


def sample_spec(rng: random.Random) -> SceneSpec:
    n = rng.randint(1, MAX_OBJECTS)
    colours = rng.sample(sorted(OBJECT_COLOURS), n)
    objects = tuple(ObjectSpec(rng.choice(SHAPES), c, rng.choice(MOTIONS)) for c in colours)
    top = rng.choice(sorted(BACKGROUND_COLOURS))
    bottom = top if rng.random() < 0.5 else rng.choice(sorted(BACKGROUND_COLOURS))
    return SceneSpec(objects, (top, bottom))


def sample_state(motion: str, rng: random.Random) -> ObjectState:
    """Draw the nuisance parameters of one object with the given motion, inside :data:`RANGES`."""
    u = rng.uniform
    if motion == "orbit":
        lo, hi = RANGES["orbit_omega"]
        return ObjectState(size=u(*RANGES["size"]), radius=u(*RANGES["orbit_radius"]),
                           phase=u(0, 2 * math.pi), omega=rng.choice((-1, 1)) * u(lo, hi))
    if motion == "pulse":
        size, amplitude = u(*RANGES["pulse_size"]), u(*RANGES["pulse_amplitude"])
        margin = EXTENT * (size + amplitude)
        return ObjectState(x=u(margin, 1 - margin), y=u(margin, 1 - margin), size=size,
                           amplitude=amplitude, omega=u(*RANGES["pulse_omega"]), phase=u(0, 2 * math.pi))
    size = u(*RANGES["size"])
    margin = EXTENT * size
    speed = u(*RANGES["speed"]) if motion != "static" else 0.0
    return ObjectState(x=u(margin, 1 - margin), y=u(margin, 1 - margin), size=size, speed=speed)


def scene_for(spec: SceneSpec | str, seed: int) -> Scene:
    """A scene that realises ``spec`` (or a prompt), nuisance parameters drawn from ``seed``."""
    if isinstance(spec, str):
        spec = parse_prompt(spec)
    rng = random.Random(f"toy-state-{seed}")
    return Scene(spec, tuple(sample_state(o.motion, rng) for o in spec.objects))


def sample_scene(seed: int, index: int) -> Scene:
    """Scene ``index`` of the stream of ``seed``: a pure function of both (string-seeded Mersenne Twister)."""
    rng = random.Random(f"toy-scene-{seed}-{index}")
    spec = sample_spec(rng)
    return Scene(spec, tuple(sample_state(o.motion, rng) for o in spec.objects))


def sample_scenes(n: int, seed: int, start: int = 0) -> list[Scene]:
    """Scenes ``start .. start + n - 1`` of the stream of ``seed``."""
    return [sample_scene(seed, i) for i in range(start, start + n)]
