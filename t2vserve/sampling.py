"""The one denoising loop: shared by the ``scheduler`` Triton model, the in-process pipeline and the benchmarks.

Only the transport differs between them: the ``Denoiser`` callable is a BLS call in the server and
a runner or torch module in-process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

from .samplers import Sampler
from .spec import CFG_BATCH
from .geometry import ModelGeometry

if TYPE_CHECKING:
    from .step_cache import StepCache

#: (denoiser entry, sample [n, C, F, h, w], timestep [n]) -> model output; the packed K/V is bound inside and
#: ``conditioning_rows(kv, n)`` picks its rows: n = 2B, a CFG pair per latent (unconditional half first),
#: or n = B at guidance 1, conditional only.
Denoiser = Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor]
#: Called after every step with (steps done, total steps, the latents after that step); may raise to stop the loop.
StepCallback = Callable[[int, int, torch.Tensor], None]


def conditioning_rows(kv: torch.Tensor, batch: int) -> torch.Tensor:
    """The K/V rows of a denoiser call of ``batch`` samples: all of ``kv`` ([negative rows, prompt rows]) for CFG
    pairs, its last ``batch`` rows (the prompts') for a guidance-free call. A view: no copy, same device."""
    return kv if batch == kv.shape[0] else kv[kv.shape[0] - batch :]


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
    """Classifier-free guidance with one batch-2 denoiser call per step (unconditional first); at guidance 1
    (or below) one batch-1 call of the conditional half, as diffusers' ``do_classifier_free_guidance``."""
    if step_cache is not None:  # t2vserve.step_cache: a step may reuse the previous output instead of a call
        denoiser = step_cache.wrap(denoiser, steps)
    trajectory = sampler.trajectory(steps)
    entries = expert_schedule(geometry, precision, trajectory.timesteps)
    guided = guidance_scale > 1.0
    for index, (t, entry) in enumerate(zip(trajectory.timesteps, entries)):
        model_input = torch.cat([latents] * CFG_BATCH) if guided else latents
        timestep = torch.full((model_input.shape[0],), float(t), dtype=torch.float32, device=latents.device)
        output = denoiser(entry, model_input, timestep).float()
        if guided:
            uncond, text = output.chunk(CFG_BATCH)
            output = uncond + guidance_scale * (text - uncond)
        latents = trajectory.step(index, output, latents)
        if on_step is not None:
            on_step(index + 1, steps, latents)
    return latents
