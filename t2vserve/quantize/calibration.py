"""Calibration data: the denoiser's real inputs, captured from full sampler trajectories in-process."""

from __future__ import annotations

import logging
from typing import Any, Iterator

import torch

from .recipe import Recipe

log = logging.getLogger(__name__)


class CalibrationSet:
    """Denoiser inputs (sample, timestep, packed K/V) of every call of the captured trajectories."""

    def __init__(self, samples: list[tuple[torch.Tensor, ...]]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        return iter(self.samples)

    def to(self, device: torch.device | str) -> "CalibrationSet":
        return CalibrationSet([tuple(t.to(device) for t in sample) for sample in self.samples])


def capture_calibration(pipeline: Any, recipe: Recipe, geometry: Any, prompt_limit: int | None = None) -> CalibrationSet:
    """Run full sampler trajectories with ``pipeline`` and record every denoiser call's inputs.

    Steps and guidance scale: the recipe's, else the preset's (what the server runs by default);
    one seed per prompt from the recipe's.
    """
    from ..params import ResolvedRequest

    cal, preset = recipe.calibration, geometry.presets
    samples: list[tuple[torch.Tensor, ...]] = []

    def record(entry: str, sample: torch.Tensor, timestep: torch.Tensor, kv: torch.Tensor) -> None:
        samples.append((sample.detach().clone(), timestep.detach().clone(), kv.detach().clone()))

    prompts = recipe.calibration_prompts(prompt_limit)
    for index, prompt in enumerate(prompts):
        request = ResolvedRequest(
            prompt, preset.negative_prompt, int(cal.get("steps", preset.steps)), float(cal.get("guidance_scale", preset.guidance_scale)),
            int(cal["seed"]) + index, preset.height, preset.width, preset.num_frames, preset.fps, geometry.default_precision, preset.sampler,
        )
        pipeline.latents(request, observer=record)
    log.info("captured %d denoiser calls from %d calibration trajectories", len(samples), len(prompts))
    return CalibrationSet(samples)
