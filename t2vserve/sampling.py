"""The one denoising loop: shared by the ``scheduler`` Triton model, the in-process pipeline and the benchmarks.

Only the transport differs between them: the ``Denoiser`` callable is a BLS call in the server and
a runner or torch module in-process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

from .samplers import Sampler
from .spec import CFG_BATCH, ModelGeometry

if TYPE_CHECKING:
    from .step_cache import StepCache

#: (denoiser entry, sample [2B, C, F, h, w], timestep [2B]) -> model output; the packed K/V is bound inside.
Denoiser = Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor]
#: Called after every step with (steps done, total steps, the latents after that step); may raise to stop the loop.
StepCallback = Callable[[int, int, torch.Tensor], None]


def initial_latents(geometry: ModelGeometry, height: int, width: int, num_frames: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Seeded Gaussian latents, drawn on the CPU like diffusers' ``randn_tensor`` with a CPU generator."""
    generator = torch.Generator("cpu").manual_seed(int(seed))
    shape = geometry.latent_shape(height, width, num_frames)
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device)


def expert_schedule(geometry: ModelGeometry, precision: str, timesteps: list[float]) -> list[str]:
    """The denoiser entry of every step: the track's first expert, its second below the boundary timestep."""
    entries = geometry.tracks[precision]
    boundary = geometry.boundary_timestep
    return [entries[0] if boundary is None or t >= boundary else entries[1] for t in timesteps]


def denoise(
    denoiser: Denoiser,
    latents: torch.Tensor,
    steps: int,
    guidance_scale: float,
    sampler: Sampler,
    geometry: ModelGeometry,
    precision: str,
    on_step: StepCallback | None = None,
    step_cache: StepCache | None = None,
) -> torch.Tensor:
    """Classifier-free guidance with one batch-2 denoiser call per step (unconditional first)."""
    if step_cache is not None:  # t2vserve.step_cache: a step may reuse the previous output instead of a call
        denoiser = step_cache.wrap(denoiser, steps)
    trajectory = sampler.trajectory(steps)
    entries = expert_schedule(geometry, precision, trajectory.timesteps)
    for index, (t, entry) in enumerate(zip(trajectory.timesteps, entries)):
        model_input = torch.cat([latents] * CFG_BATCH)
        timestep = torch.full((model_input.shape[0],), float(t), dtype=torch.float32, device=latents.device)
        uncond, text = denoiser(entry, model_input, timestep).float().chunk(CFG_BATCH)
        latents = trajectory.step(index, uncond + guidance_scale * (text - uncond), latents)
        if on_step is not None:
            on_step(index + 1, steps, latents)
    return latents
