"""Calibration data: the denoiser's real inputs, captured from full sampler trajectories in-process."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from .recipe import Recipe

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaptureSettings:
    """How much of the recipe's calibration to run; None keeps the recipe's (else the preset's) value.

    The defaults capture the recipe in full. A short capture (``CaptureSettings.short()``: one prompt,
    two steps, the family's tiny-preset resolution) calibrates a full-size random-weight model on a
    GPU in seconds: speed-only models, whose ranges mean nothing anyway.
    """

    prompts: int | None = None  # the first N calibration prompts
    steps: int | None = None
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None

    @classmethod
    def short(cls, geometry: Any, prompts: int = 1, steps: int = 2) -> "CaptureSettings":
        """Few prompts, few steps, the resolution and frames of the family's tiny preset (inside the model's ranges)."""
        from ..families import get_family
        from ..spec import PRESETS

        tiny = PRESETS[get_family(geometry.family).tiny_preset]
        ranges = geometry.ranges()
        return cls(prompts, steps, ranges["HEIGHT"].nearest(tiny.height), ranges["WIDTH"].nearest(tiny.width),
                   ranges["NUM_FRAMES"].nearest(tiny.num_frames))


class CalibrationSet:
    """Denoiser inputs (sample, timestep, packed K/V) of every call of the captured trajectories."""

    def __init__(self, samples: list[tuple[torch.Tensor, ...]], entries: list[str] | None = None) -> None:
        self.samples = samples
        self.entries = entries if entries is not None else [""] * len(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        return iter(self.samples)

    def to(self, device: torch.device | str) -> "CalibrationSet":
        return CalibrationSet([tuple(t.to(device) for t in sample) for sample in self.samples], self.entries)

    def for_entry(self, entry: str) -> "CalibrationSet":
        """The calls that went to denoiser ``entry`` (A14B: each expert calibrates on its own timesteps)."""
        picked = [i for i, e in enumerate(self.entries) if e == entry]
        return CalibrationSet([self.samples[i] for i in picked], [entry] * len(picked))


def capture_calibration(pipeline: Any, recipe: Recipe, geometry: Any, settings: CaptureSettings | int | None = None) -> CalibrationSet:
    """Run sampler trajectories with ``pipeline`` on the full-precision track; record every denoiser call's inputs.

    Steps and guidance scale: the recipe's, else the preset's (what the server runs by default);
    one seed per prompt from the recipe's. ``settings`` shortens the capture (an int: a prompt limit).
    """
    from ..params import ResolvedRequest

    if not isinstance(settings, CaptureSettings):
        settings = CaptureSettings(prompts=settings)
    cal, preset = recipe.calibration, geometry.presets
    samples: list[tuple[torch.Tensor, ...]] = []
    entries: list[str] = []

    def record(entry: str, sample: torch.Tensor, timestep: torch.Tensor, kv: torch.Tensor) -> None:
        samples.append((sample.detach().clone(), timestep.detach().clone(), kv.detach().clone()))
        entries.append(entry)

    prompts = recipe.calibration_prompts(settings.prompts)
    steps = settings.steps or int(cal.get("steps", preset.steps))
    for index, prompt in enumerate(prompts):
        request = ResolvedRequest(
            prompt, preset.negative_prompt, steps, float(cal.get("guidance_scale", preset.guidance_scale)), int(cal["seed"]) + index,
            settings.height or preset.height, settings.width or preset.width, settings.num_frames or preset.num_frames, preset.fps,
            geometry.tier_precision("full"), preset.sampler,
        )
        pipeline.latents(request, observer=record)
    log.info("captured %d denoiser calls from %d calibration trajectories (%d steps)", len(samples), len(prompts), steps)
    return CalibrationSet(samples, entries)
