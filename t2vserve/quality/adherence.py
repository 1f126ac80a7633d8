"""Prompt adherence: a deterministic detector that reads a decoded clip of the shapes world.

It estimates the background from the frame borders, segments the foreground (largest connected
region of pixels far from the background), and reports
- the colour: the palette colour nearest to the foreground's median colour;
- the shape: from how much of its bounding box the region fills (square ~0.9+, circle ~0.78,
  triangle ~0.5), median over frames;
- the motion: the centroid's displacement over the clip (left/right/up/down) or, when the area
  changes more than twofold, grow/shrink.

Adherence over a prompt set is the share of clips whose detected attribute equals the asked one,
per attribute and for all three at once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable

import numpy as np

from ..train.world import BACKGROUNDS, COLOURS

ATTRIBUTES = ("colour", "shape", "motion")
#: Colour distance (0..441 in RGB units) above which a pixel belongs to the foreground.
FOREGROUND_DISTANCE = 70.0
#: A frame with fewer foreground pixels than this has no shape to measure.
MIN_PIXELS = 12
#: Fill ratio (region area / bounding box area) thresholds.
SQUARE_FILL, TRIANGLE_FILL = 0.9, 0.66
#: Area ratio over the clip that counts as grow/shrink, and the least displacement (pixels per 64) that is a move.
SIZE_CHANGE, MIN_TRAVEL = 2.0, 4.0


@dataclass(frozen=True)
class Reading:
    """The detector's reading of one clip ("none" where it found nothing)."""

    colour: str
    shape: str
    motion: str
    background: str
    foreground_share: float  # mean share of pixels in the foreground

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _largest_region(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = ndimage.sum(mask, labels, index=range(1, count + 1))
    return labels == (int(np.argmax(sizes)) + 1)


def _nearest(value: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    return min(palette, key=lambda name: float(np.sum((value - np.asarray(palette[name], dtype=np.float64)) ** 2)))


def _fill_ratio(region: np.ndarray) -> float:
    rows, cols = np.nonzero(region)
    box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    return float(region.sum()) / float(box)


def read_clip(video: np.ndarray) -> Reading:
    """Detect colour, shape and motion in ``video`` uint8 [F, H, W, 3] (the served VIDEO output)."""
    frames = np.asarray(video, dtype=np.float64)
    num_frames, height, width, _ = frames.shape
    border = np.concatenate([frames[:, :2].reshape(-1, 3), frames[:, -2:].reshape(-1, 3),
                             frames[:, :, :2].reshape(-1, 3), frames[:, :, -2:].reshape(-1, 3)])
    background = np.median(border, axis=0)
    distance = np.sqrt(((frames - background) ** 2).sum(-1))
    masks = [_largest_region(d > FOREGROUND_DISTANCE) for d in distance]
    areas = np.array([m.sum() for m in masks], dtype=np.float64)
    share = float(areas.mean() / (height * width))
    bg_name = _nearest(background, BACKGROUNDS)
    present = [i for i in range(num_frames) if areas[i] >= MIN_PIXELS]
    if not present:
        return Reading("none", "none", "none", bg_name, share)

    pixels = np.concatenate([frames[i][masks[i]] for i in present])
    colour = _nearest(np.median(pixels, axis=0), COLOURS)
    fill = float(np.median([_fill_ratio(masks[i]) for i in present]))
    shape = "square" if fill >= SQUARE_FILL else "circle" if fill >= TRIANGLE_FILL else "triangle"

    motion = "none"
    if len(present) >= 2:
        t = np.asarray(present, dtype=np.float64)
        centroids = np.array([np.argwhere(masks[i]).mean(axis=0) for i in present])  # (row, col)
        span = t[-1] - t[0]
        dy, dx = (np.polyfit(t, centroids[:, k], 1)[0] * span for k in (0, 1))
        log_area = np.polyfit(t, np.log(areas[present]), 1)[0] * span
        scale = 64.0 / max(height, width)
        if abs(log_area) >= np.log(SIZE_CHANGE):
            motion = "grow" if log_area > 0 else "shrink"
        elif max(abs(dx), abs(dy)) * scale >= MIN_TRAVEL:
            motion = ("right" if dx > 0 else "left") if abs(dx) >= abs(dy) else ("down" if dy > 0 else "up")
    return Reading(colour, shape, motion, bg_name, share)


def matches(reading: Reading, expected: dict[str, str | None]) -> dict[str, bool]:
    """Per attribute the prompt names: does the reading agree? (plus "all": every named one does)."""
    out = {k: getattr(reading, k) == v for k, v in expected.items() if k in ATTRIBUTES and v is not None}
    out["all"] = all(out.values()) if out else False
    return out


def adherence(rows: Iterable[dict[str, bool]]) -> dict[str, float]:
    """Share (0..1) of clips matching, per attribute and "all", over ``rows`` of ``matches``."""
    rows = list(rows)
    keys = [*ATTRIBUTES, "all"]
    return {k: float(np.mean([r[k] for r in rows if k in r])) if any(k in r for r in rows) else float("nan") for k in keys}
