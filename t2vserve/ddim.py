"""DDIM (eta = 0) on torch tensors of any device, configured like diffusers' ``DDIMScheduler``.

The scheduler model runs this loop next to the UNet calls; tests hold it to diffusers' own
scheduler (same config) at 1e-5.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

SUPPORTED_SPACINGS = ("leading", "trailing", "linspace")
SUPPORTED_PREDICTIONS = ("epsilon", "v_prediction", "sample")


def zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Betas rescaled so the last timestep is pure noise (Lin et al. 2024, "Common Diffusion Noise
    Schedules and Sample Steps Are Flawed"): sqrt(alpha_bar) is shifted to end at 0 and scaled to keep
    its first value. Without it the model learns to read the coarse layout from the noise it is given.
    """
    root = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    alpha_bar = ((root - last) * (first / (first - last))) ** 2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1.0 - alphas


class DDIM:
    """Deterministic DDIM sampler. ``step`` maps x_t to x_{t-1} for one timestep of a trajectory."""

    def __init__(self, config: dict[str, Any]) -> None:
        cfg = {
            "num_train_timesteps": 1000,
            "beta_start": 0.0001,
            "beta_end": 0.02,
            "beta_schedule": "linear",
            "clip_sample": True,
            "clip_sample_range": 1.0,
            "set_alpha_to_one": True,
            "steps_offset": 0,
            "prediction_type": "epsilon",
            "timestep_spacing": "leading",
            "thresholding": False,
            "rescale_betas_zero_snr": False,
            "trained_betas": None,
        }
        cfg.update({k: v for k, v in config.items() if k in cfg})
        if cfg["thresholding"] or cfg["trained_betas"] is not None:
            raise NotImplementedError("DDIM: thresholding and trained_betas are not supported")
        if cfg["timestep_spacing"] not in SUPPORTED_SPACINGS:
            raise ValueError(f"timestep_spacing must be one of {SUPPORTED_SPACINGS}")
        if cfg["prediction_type"] not in SUPPORTED_PREDICTIONS:
            raise ValueError(f"prediction_type must be one of {SUPPORTED_PREDICTIONS}")
        self.config = cfg
        n = cfg["num_train_timesteps"]
        schedule = cfg["beta_schedule"]
        if schedule == "linear":
            betas = torch.linspace(cfg["beta_start"], cfg["beta_end"], n, dtype=torch.float32)
        elif schedule == "scaled_linear":
            betas = torch.linspace(cfg["beta_start"] ** 0.5, cfg["beta_end"] ** 0.5, n, dtype=torch.float32) ** 2
        elif schedule == "squaredcos_cap_v2":
            alpha_bar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
            betas = torch.tensor([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)], dtype=torch.float32)
        else:
            raise ValueError(f"unsupported beta_schedule {schedule!r}")
        if cfg["rescale_betas_zero_snr"]:
            betas = zero_terminal_snr(betas)
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.final_alpha_cumprod = torch.tensor(1.0) if cfg["set_alpha_to_one"] else self.alphas_cumprod[0]

    @property
    def num_train_timesteps(self) -> int:
        return int(self.config["num_train_timesteps"])

    def timesteps(self, steps: int) -> np.ndarray:
        """The ``steps`` timesteps of a trajectory, high noise first (int64)."""
        n, spacing = self.num_train_timesteps, self.config["timestep_spacing"]
        if not 1 <= steps <= n:
            raise ValueError(f"steps must be in [1, {n}]")
        if spacing == "linspace":
            return np.linspace(0, n - 1, steps).round()[::-1].copy().astype(np.int64)
        if spacing == "leading":
            ratio = n // steps
            return (np.arange(0, steps) * ratio).round()[::-1].copy().astype(np.int64) + self.config["steps_offset"]
        ratio = n / steps
        return np.round(np.arange(n, 0, -ratio)).astype(np.int64) - 1

    def alphas(self, timestep: int, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha_cumprod at t, alpha_cumprod at the previous timestep) as float32 scalars."""
        prev = timestep - self.num_train_timesteps // steps
        alpha_prev = self.alphas_cumprod[prev] if prev >= 0 else self.final_alpha_cumprod
        return self.alphas_cumprod[timestep], alpha_prev

    def step(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor, steps: int) -> torch.Tensor:
        """x_{t-1} from x_t and the model output at timestep ``timestep`` of a ``steps``-step trajectory."""
        alpha_t, alpha_prev = self.alphas(int(timestep), steps)
        beta_t = 1 - alpha_t
        kind = self.config["prediction_type"]
        if kind == "epsilon":
            x0 = (sample - beta_t**0.5 * model_output) / alpha_t**0.5
            eps = model_output
        elif kind == "v_prediction":
            x0 = alpha_t**0.5 * sample - beta_t**0.5 * model_output
            eps = alpha_t**0.5 * model_output + beta_t**0.5 * sample
        else:
            x0 = model_output
            eps = (sample - alpha_t**0.5 * x0) / beta_t**0.5
        if self.config["clip_sample"]:
            limit = self.config["clip_sample_range"]
            x0 = x0.clamp(-limit, limit)
        return alpha_prev**0.5 * x0 + (1 - alpha_prev) ** 0.5 * eps
