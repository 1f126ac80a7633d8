"""The sampling loop as the Python models run it: ``scheduler`` (the ``t2v`` ensemble) and ``t2v_stream``.

Both hand ``DenoisingLoop.run`` the ``scheduler`` entry's inputs by name (KV, the resolved
parameters, DEADLINE); the loop calls the denoiser entries through BLS with the request's packed K/V
and checks, before every step, whether the client cancelled the request or its TIME_LIMIT_S ran out.

PRECISION picks the track (the model's ``ModelGeometry.tracks``: unet3d int8 -> ``unet_int8``, fp16 ->
``unet``; wan22 bf16 -> ``transformer`` [+ ``transformer_2``, the low-noise expert below the boundary
timestep]); SAMPLER the sampler (unet3d: ddim; wan22: unipc, euler); STEP_CACHE the step cache's
threshold (``t2vserve.step_cache``; 0: off). Latents are created on the K/V's device, so with a GPU
runner the whole loop stays on the GPU (DLPack in and out of BLS, no host round trip per step; the step
cache adds one scalar per computed step). Each request's steps and skipped steps go to Triton's metrics
endpoint (``step_cache.STEP_METRICS``, labels model and version).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
import triton_python_backend_utils as pb_utils

from ..samplers import make_sampler
from ..sampling import conditioning_rows, denoise, initial_latents
from ..spec import DEADLINE, GEOMETRY_FILE, KV, NOISE_PRED, SAMPLE, TIMESTEP, ModelGeometry
from ..step_cache import STEP_METRICS, StepCache, StepCacheStats
from .common import RequestCancelled, TimeLimitExceeded, config_parameter, from_torch, infer, model_config, to_torch, version_dir


@dataclass
class StepGuard:
    """Ends a request between two denoising steps: cancelled by its client, or past its deadline."""

    is_cancelled: Callable[[], bool]
    deadline: float  # unix time, from preprocess: arrival + TIME_LIMIT_S
    time_limit_s: float
    total: int
    done: int = 0

    def check(self) -> None:
        """Raise RequestCancelled or TimeLimitExceeded; otherwise return at once."""
        if self.is_cancelled():
            raise RequestCancelled(f"request cancelled by the client after {self.done} of {self.total} denoising steps")
        if time.time() > self.deadline:
            raise TimeLimitExceeded(
                f"TIME_LIMIT_S: the request ran past its time limit of {self.time_limit_s:g} s and was stopped after "
                f"{self.done} of {self.total} denoising steps; give a longer TIME_LIMIT_S (at most the server's "
                "max_time_limit_s) or fewer STEPS"
            )


#: Called after every step with (steps done, total steps, the latents after it, whether it reused the previous output).
ProgressCallback = Callable[[int, int, torch.Tensor, bool], None]


class StepMetrics:
    """The loop's counters (``STEP_METRICS``) as Triton custom metrics; each request adds what it did."""

    def __init__(self, labels: dict[str, str]) -> None:
        kind = pb_utils.MetricFamily.COUNTER  # the families must outlive their metrics: keep both
        self.families = {field: pb_utils.MetricFamily(name=name, description=text, kind=kind) for field, (name, text) in STEP_METRICS.items()}
        self.metrics = {field: family.Metric(labels=labels) for field, family in self.families.items()}

    def publish(self, stats: StepCacheStats) -> None:
        for field, metric in self.metrics.items():
            if getattr(stats, field):
                metric.increment(getattr(stats, field))


def _assert_on(device_type: str, **tensors: torch.Tensor) -> None:
    for name, tensor in tensors.items():
        if tensor.device.type != device_type:
            raise AssertionError(f"{name} is on {tensor.device}, expected {device_type}")


class DenoisingLoop:
    """The ``scheduler`` entry's inputs -> denoised latents [1, C, f, h, w], one BLS denoiser call per step."""

    def __init__(self, args: dict[str, str]) -> None:
        self.geometry = ModelGeometry.load(version_dir(args) / GEOMETRY_FILE)
        self.samplers = {name: make_sampler(name, self.geometry.scheduler_config) for name in self.geometry.samplers}
        # Debug: with parameter assert_device (e.g. "cuda"), every step checks that K/V, latents and the
        # denoiser output live on that device type, i.e. nothing took a host round trip.
        self.assert_device = config_parameter(model_config(args), "assert_device", "") or os.environ.get("T2V_ASSERT_DEVICE") or None
        self.metrics = StepMetrics({"model": args["model_name"], "version": args["model_version"]})

    def run(
        self,
        inputs: Mapping[str, "pb_utils.Tensor"],
        is_cancelled: Callable[[], bool],
        on_step: ProgressCallback | None = None,
    ) -> torch.Tensor:
        """Denoise; ``is_cancelled`` is asked before every step, ``on_step`` called after each."""

        def scalar(name: str) -> Any:
            return inputs[name].as_numpy().reshape(-1)[0]

        steps = int(scalar("STEPS"))
        guard = StepGuard(is_cancelled, float(scalar(DEADLINE)), float(scalar("TIME_LIMIT_S")), steps)
        kv = to_torch(inputs[KV])
        # K/V per denoiser batch: the request's tensor as it came for CFG pairs; for a guidance-free call the
        # prompt's row alone, a view of it on its device (DLPack, no host copy), made once per request
        kv_rows: dict[int, "pb_utils.Tensor"] = {kv.shape[0]: inputs[KV]}
        latents = initial_latents(
            self.geometry, int(scalar("HEIGHT")), int(scalar("WIDTH")), int(scalar("NUM_FRAMES")), int(scalar("SEED")), device=kv.device
        )

        def denoiser(entry: str, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
            guard.check()
            batch = sample.shape[0]
            if batch not in kv_rows:
                kv_rows[batch] = from_torch(KV, conditioning_rows(kv, batch))
            # the denoiser entries batch across requests: TIMESTEP travels as [batch, 1] (see repository.py)
            (output,) = infer(entry, [from_torch(SAMPLE, sample), from_torch(TIMESTEP, timestep.reshape(-1, 1)), kv_rows[batch]], [NOISE_PRED])
            output = to_torch(output)
            if self.assert_device is not None:
                _assert_on(self.assert_device, kv=kv, sample=sample, output=output)
            return output.to(sample.device)

        cache = StepCache(float(scalar("STEP_CACHE")))

        def after_step(done: int, total: int, current: torch.Tensor) -> None:
            guard.done = done
            if on_step is not None:
                on_step(done, total, current, cache.last_cached)
            if done < total and cache.threshold > 0:
                guard.check()  # the next step may come from the cache, with no denoiser call to check before

        sampler = self.samplers[scalar("SAMPLER").decode("utf-8")]
        precision = scalar("PRECISION").decode("utf-8")
        try:
            return denoise(denoiser, latents, steps, float(scalar("GUIDANCE_SCALE")), sampler, self.geometry, precision, after_step, cache)
        finally:
            self.metrics.publish(cache.stats)
