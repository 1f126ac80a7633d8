"""The procedural "shapes" world the demo models are trained on: clips, captions and held-out combinations.

One coloured shape (circle, square, triangle) on a flat background moves left, right, up or down, or
grows or shrinks. Clips are rendered with anti-aliased edges by a vectorised torch rasteriser (so
training renders them on the GPU, millions per minute) and are fully determined by a seed. Captions
come from templates with varied wording; some colour x shape x motion combinations never appear in
training (``HELD_OUT``) so adherence can be measured on combinations the model has not seen.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
#: Words a caption may use for each shape (the first is the canonical one).
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "ball", "disc", "dot"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle",),
}
#: Foreground colours, sRGB 0..255; far apart from each other and from every background.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (35, 185, 60),
    "blue": (40, 80, 240),
    "yellow": (245, 215, 30),
    "purple": (190, 50, 230),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"black": (0, 0, 0), "white": (255, 255, 255), "gray": (110, 110, 110)}
MOTIONS: tuple[str, ...] = ("left", "right", "up", "down", "grow", "shrink")
#: Unit displacement per direction in image coordinates (x to the right, y downwards).
DIRECTIONS: dict[str, tuple[float, float]] = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}

#: Colour x shape x motion combinations that never appear in training (every single attribute does).
HELD_OUT: frozenset[tuple[str, str, str]] = frozenset({
    ("red", "triangle", "up"),
    ("green", "circle", "left"),
    ("blue", "square", "grow"),
    ("yellow", "triangle", "right"),
    ("purple", "circle", "down"),
    ("red", "square", "shrink"),
    ("green", "triangle", "down"),
    ("blue", "circle", "right"),
})

#: ``make demo``'s prompt (a combination seen in training).
DEMO_PROMPT = "a red circle moving to the right on a black background"

_DIRECTION_PHRASES = {
    "left": ("to the left", "left", "leftward"),
    "right": ("to the right", "right", "rightward"),
    "up": ("up", "upward", "upwards"),
    "down": ("down", "downward", "downwards"),
}
_MOVE_VERBS = ("moving", "sliding", "drifting", "going")
_MOVE_TEMPLATES = (
    "a {colour} {shape} {verb} {direction}",
    "{colour} {shape} {verb} {direction} on {background}",
    "a {colour} {shape} on a {background} background {verb} {direction}",
    "the {colour} {shape} {verb} {direction}",
)
_SIZE_PHRASES = {
    "grow": ("growing", "getting bigger", "expanding"),
    "shrink": ("shrinking", "getting smaller", "contracting"),
}
_SIZE_TEMPLATES = (
    "a {colour} {shape} {change}",
    "{colour} {shape} {change} on {background}",
    "a {colour} {shape} on a {background} background {change}",
    "the {colour} {shape} {change}",
)


@dataclass(frozen=True)
class Attributes:
    """What a clip shows (and what a prompt asks for)."""

    colour: str
    shape: str
    motion: str
    background: str = "black"

    @property
    def combination(self) -> tuple[str, str, str]:
        return (self.colour, self.shape, self.motion)

    @property
    def held_out(self) -> bool:
        return self.combination in HELD_OUT


def canonical_prompt(a: Attributes) -> str:
    """The fixed wording of evaluation prompts, e.g. "a red circle moving to the right on a black background"."""
    if a.motion in DIRECTIONS:
        return f"a {a.colour} {a.shape} moving {_DIRECTION_PHRASES[a.motion][0]} on a {a.background} background"
    return f"a {a.colour} {a.shape} {_SIZE_PHRASES[a.motion][0]} on a {a.background} background"


def caption(a: Attributes, rng: random.Random) -> str:
    """One of many wordings of ``a`` (the background is named in some of them)."""
    shape = rng.choice(SHAPE_WORDS[a.shape])
    if a.motion in DIRECTIONS:
        template = rng.choice(_MOVE_TEMPLATES)
        return template.format(colour=a.colour, shape=shape, verb=rng.choice(_MOVE_VERBS),
                               direction=rng.choice(_DIRECTION_PHRASES[a.motion]), background=a.background)
    template = rng.choice(_SIZE_TEMPLATES)
    return template.format(colour=a.colour, shape=shape, change=rng.choice(_SIZE_PHRASES[a.motion]), background=a.background)


def parse_prompt(text: str) -> dict[str, str | None]:
    """The attributes a free-form prompt names (None where it names none): what the detector is compared with."""
    words = text.lower().replace(",", " ").split()
    joined = " " + " ".join(words) + " "

    def find(options: Iterable[str]) -> str | None:
        return next((o for o in options if f" {o} " in joined), None)

    shape = next((s for s, names in SHAPE_WORDS.items() if find(names)), None)
    motion = next((m for m, phrases in {**_DIRECTION_PHRASES, **_SIZE_PHRASES}.items()
                   if any(f" {p} " in joined for p in phrases)), None)
    return {"colour": find(COLOURS), "shape": shape, "motion": motion}


def combinations(held_out: bool | None = None) -> list[tuple[str, str, str]]:
    """Every colour x shape x motion; ``held_out`` True/False: only those (not) kept out of training."""
    every = [(c, s, m) for c in COLOURS for s in SHAPES for m in MOTIONS]
    return every if held_out is None else [combo for combo in every if (combo in HELD_OUT) == held_out]


_CHOICES = {held_out: combinations(held_out) for held_out in (False, True)}
_BACKGROUND_NAMES = list(BACKGROUNDS)


def sample_attributes(rng: random.Random, held_out: bool = False, backgrounds: Sequence[str] | None = None) -> Attributes:
    """A random clip of the training combinations (``held_out``: of the held-out ones) on one of ``backgrounds`` (None: all)."""
    colour, shape, motion = rng.choice(_CHOICES[held_out])
    return Attributes(colour, shape, motion, rng.choice(backgrounds or _BACKGROUND_NAMES))


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------
def _trajectories(attrs: list[Attributes], frames: int, size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per clip and frame: centre [B, F, 2] (pixels) and radius [B, F]."""
    n = len(attrs)
    u = torch.rand(n, 6, generator=gen)
    t = torch.linspace(0.0, 1.0, frames)
    centres, radii = torch.empty(n, frames, 2), torch.empty(n, frames)
    for i, a in enumerate(attrs):
        if a.motion in DIRECTIONS:
            r = size * (0.11 + 0.05 * float(u[i, 0]))
            travel = size * (0.38 + 0.12 * float(u[i, 1]))
            dx, dy = DIRECTIONS[a.motion]
            margin = r + 0.04 * size
            # Along the motion: start so the whole path stays inside; across it: anywhere inside.
            along0 = margin + float(u[i, 2]) * (size - 2 * margin - travel)
            across = margin + float(u[i, 3]) * (size - 2 * margin)
            start = along0 if (dx + dy) > 0 else size - along0
            x = start + dx * travel * t if dx else torch.full((frames,), across)
            y = start + dy * travel * t if dy else torch.full((frames,), across)
            centres[i] = torch.stack([x, y], dim=-1)
            radii[i] = r
        else:
            small, large = size * (0.08 + 0.02 * float(u[i, 0])), size * (0.2 + 0.04 * float(u[i, 1]))
            r0, r1 = (small, large) if a.motion == "grow" else (large, small)
            margin = large + 0.04 * size
            cx, cy = (margin + float(u[i, k]) * (size - 2 * margin) for k in (2, 3))
            centres[i] = torch.tensor([cx, cy]).expand(frames, 2)
            radii[i] = r0 * (r1 / r0) ** t  # geometric: the area changes by the same factor each frame
    return centres, radii


def _coverage(shape: str, px: torch.Tensor, py: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Anti-aliased coverage (0..1) of ``shape`` centred at the origin; px/py pixel centres relative to it."""
    if shape == "circle":
        sd = r - torch.sqrt(px * px + py * py)
    elif shape == "square":
        half = r * math.sqrt(math.pi) / 2  # same area as the circle of radius r
        sd = half - torch.maximum(px.abs(), py.abs())
    else:  # upright isosceles triangle: apex at -r, base at +0.8 r, base width 2 r
        top, bottom = -r, 0.8 * r
        slope_len = math.sqrt(1.0 + (1.0 / 1.8) ** 2)
        # |x| <= (y - top) / 1.8  ->  signed distance to each slanted edge
        edge = ((py - top) / 1.8 - px.abs()) / slope_len
        sd = torch.minimum(bottom - py, edge)
    return (sd + 0.5).clamp(0.0, 1.0)


def render(attrs: list[Attributes], frames: int = 8, size: int = 64, seed: int = 0, device: str | torch.device = "cpu") -> torch.Tensor:
    """Clips [B, F, 3, size, size] in [0, 1], one per attribute set; positions and sizes drawn from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    centres, radii = _trajectories(attrs, frames, size, gen)
    centres, radii = centres.to(device), radii.to(device)
    grid = torch.arange(size, dtype=torch.float32, device=device) + 0.5
    px = grid.view(1, 1, 1, size) - centres[..., 0, None, None]  # [B, F, 1, W]
    py = grid.view(1, 1, size, 1) - centres[..., 1, None, None]  # [B, F, H, 1]
    r = radii[..., None, None]
    cover = torch.zeros(len(attrs), frames, size, size, device=device)
    for shape in SHAPES:
        idx = [i for i, a in enumerate(attrs) if a.shape == shape]
        if idx:
            sel = torch.tensor(idx, device=device)
            cover[sel] = _coverage(shape, px[sel], py[sel], r[sel])
    fg = torch.tensor([COLOURS[a.colour] for a in attrs], dtype=torch.float32, device=device) / 255
    bg = torch.tensor([BACKGROUNDS[a.background] for a in attrs], dtype=torch.float32, device=device) / 255
    cover = cover[:, :, None]
    return cover * fg[:, None, :, None, None] + (1 - cover) * bg[:, None, :, None, None]


def batch(n: int, rng: random.Random, frames: int = 8, size: int = 64, device: str | torch.device = "cpu",
          drop_caption: float = 0.0, backgrounds: Sequence[str] | None = None) -> tuple[torch.Tensor, list[str], list[Attributes]]:
    """A training batch: clips in [-1, 1] [B, F, 3, H, W], captions ("" with probability ``drop_caption``), attributes
    (``backgrounds``: only these, e.g. a one-background world for short CPU runs; None: all)."""
    attrs = [sample_attributes(rng, backgrounds=backgrounds) for _ in range(n)]
    captions = ["" if rng.random() < drop_caption else caption(a, rng) for a in attrs]
    clips = render(attrs, frames, size, seed=rng.randrange(2**31), device=device)
    return clips * 2 - 1, captions, attrs
