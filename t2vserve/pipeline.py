"""The served pipeline without Triton: the same stages and the same loop (``sampling.denoise``) in-process.

``Pipeline`` runs the slots through a ``SlotCall`` (slot name, named inputs -> named outputs):
``InProcessPipeline`` binds it to the family's torch modules (calibration capture, baselines),
``bench.RunnerPipeline`` to the repository's runners. Tests compare the served clip against
diffusers' own pipelines instead, which share none of this code.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from .families import get_family
from .families.base import Slot
from .params import ResolvedRequest, tokenize_pair
from .samplers import make_sampler
from .sampling import conditioning_rows, denoise, initial_latents
from .spec import DENOISER, KV_PROJECTOR, TEXT_ENCODER, VAE_DECODER
from .geometry import ModelGeometry
from .step_cache import StepCache

#: Runs one engine slot: (slot name, {input name: tensor}) -> {output name: tensor}.
SlotCall = Callable[[str, dict[str, torch.Tensor]], dict[str, torch.Tensor]]
#: Called with (denoiser entry, sample, timestep, kv) before every denoiser call (calibration capture).
DenoiserObserver = Callable[[str, torch.Tensor, torch.Tensor, torch.Tensor], None]


class Pipeline:
    """prompt -> uint8 frames [F, H, W, 3], every stage through ``call``."""

    def __init__(self, geometry: ModelGeometry, tokenizer: Any, call: SlotCall, device: str | torch.device = "cpu") -> None:
        self.geometry, self.tokenizer, self.call, self.device = geometry, tokenizer, call, torch.device(device)
        self.family = get_family(geometry.family)
        self.slots = {slot.name: slot for slot in self.family.slots_of(geometry)}
        self.samplers = {name: make_sampler(name, geometry.scheduler_config) for name in geometry.samplers}

    def role(self, role: str) -> Slot:
        return next(slot for slot in self.slots.values() if slot.role == role)

    def _run(self, slot: Slot, *tensors: torch.Tensor) -> torch.Tensor:
        return self.call(slot.name, dict(zip(slot.input_names, tensors)))[slot.output_names[0]]

    @torch.no_grad()
    def packed_kv(self, prompt: str, negative_prompt: str) -> torch.Tensor:
        ids = tokenize_pair(self.tokenizer, prompt, negative_prompt, self.geometry.text_max_length, self.family.clean_prompt)
        embeds = self._run(self.role(TEXT_ENCODER), torch.from_numpy(ids).to(self.device))
        return self._run(self.role(KV_PROJECTOR), embeds)

    @torch.no_grad()
    def latents(self, request: ResolvedRequest, observer: DenoiserObserver | None = None, step_cache: StepCache | None = None) -> torch.Tensor:
        """Denoised latents; ``step_cache`` (default: one with the request's STEP_CACHE) counts the steps it skipped."""
        kv = self.packed_kv(request.prompt, request.negative_prompt)

        def denoiser(entry: str, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
            rows = conditioning_rows(kv, sample.shape[0])
            if observer is not None:
                observer(entry, sample, timestep, rows)
            return self._run(self.slots[entry], sample, timestep, rows).to(sample.device)

        g = self.geometry
        latents = initial_latents(g, request.height, request.width, request.num_frames, request.seed, self.device)
        sampler = self.samplers[request.sampler]
        cache = step_cache if step_cache is not None else StepCache(request.step_cache)
        return denoise(denoiser, latents, request.steps, request.guidance_scale, sampler, g, request.precision, step_cache=cache)

    @torch.no_grad()
    def generate(self, request: ResolvedRequest, observer: DenoiserObserver | None = None, step_cache: StepCache | None = None) -> np.ndarray:
        return self._run(self.role(VAE_DECODER), self.latents(request, observer, step_cache)).cpu().numpy()  # uint8 frames


class InProcessPipeline(Pipeline):
    """The family's torch modules on one device (the modules ONNX export and the torch runner run)."""

    def __init__(self, components: Any, geometry: ModelGeometry, device: str = "cpu") -> None:
        slots = get_family(geometry.family).slots_of(geometry)
        modules = {slot.name: slot.module(components).to(device).eval() for slot in slots if slot.role != DENOISER or slot.quantized_from is None}
        self.components = components

        def call(name: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            slot = self.slots[name]
            module = modules[slot.quantized_from or name]  # an int8 track runs its source module in torch
            return {slot.output_names[0]: module(*inputs.values())}

        super().__init__(geometry, components.tokenizer, call, device)
