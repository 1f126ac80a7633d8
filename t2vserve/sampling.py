"""The denoising loop shared by the ``scheduler`` Triton model and the in-process pipeline."""

from __future__ import annotations

from typing import Callable

import torch

from .ddim import DDIM
from .spec import ModelGeometry

#: (sample [2B, C, F, h, w], timestep [2B]) -> noise prediction; the packed K/V is bound inside.
UNetCall = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def initial_latents(geometry: ModelGeometry, height: int, width: int, num_frames: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Seeded Gaussian latents, drawn on the CPU like diffusers' ``randn_tensor`` with a CPU generator."""
    generator = torch.Generator("cpu").manual_seed(int(seed))
    shape = geometry.latent_shape(height, width, num_frames)
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device)


def denoise(
    unet: UNetCall,
    latents: torch.Tensor,
    steps: int,
    guidance_scale: float,
    ddim: DDIM,
    on_step: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """DDIM with classifier-free guidance: one batch-2 UNet call per step (unconditional first)."""
    for index, t in enumerate(ddim.timesteps(steps)):
        model_input = torch.cat([latents, latents])
        timestep = torch.full((model_input.shape[0],), float(t), dtype=torch.float32, device=latents.device)
        noise_uncond, noise_text = unet(model_input, timestep).chunk(2)
        noise = noise_uncond + guidance_scale * (noise_text - noise_uncond)
        latents = ddim.step(noise, int(t), latents, steps)
        if on_step is not None:
            on_step(index + 1, steps)
    return latents


def latents_to_frames_batch(latents: torch.Tensor) -> torch.Tensor:
    """[1, C, F, h, w] -> [F, C, h, w]: frames become the VAE decoder's batch."""
    return latents[0].permute(1, 0, 2, 3).contiguous()
