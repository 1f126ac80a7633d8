"""The sampling loop as the Python models run it: ``scheduler`` (the ``t2v`` ensemble) and ``t2v_stream``.

Both hand ``DenoisingLoop.run`` the ``scheduler`` entry's inputs by name (KV, the resolved
parameters, DEADLINE); the loop calls the denoiser entries through BLS with the request's packed K/V
and checks, before every step, whether the client cancelled the request or its TIME_LIMIT_S ran out.

PRECISION picks the track (the model's ``ModelGeometry.tracks``: unet3d int8 -> ``unet_int8``, fp16 ->
``unet``; wan22 bf16 -> ``transformer`` [+ ``transformer_2``, the low-noise expert below the boundary
timestep]); SAMPLER the sampler (unet3d: ddim; wan22: unipc, euler); STEP_CACHE the step cache's
threshold (``t2vserve.step_cache``; 0: off). Each request's steps and skipped steps go to Triton's metrics
endpoint (``step_cache.STEP_METRICS``, labels model and version).

**Device** (``t2vserve.placement``): a GPU instance (``model_instance_kind`` GPU) runs its loop on
``cuda:<model_instance_device_id>``: the K/V moved there once per request, the latents drawn there, a host
tensor an error. A CPU instance runs it on the K/V's device. Either way every denoiser output is asked for on
the loop's device (BLS ``preferred_memory``) and the loop stays where it starts: DLPack in and out of BLS, no
host round trip per step (the step cache adds one scalar per computed step).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
import triton_python_backend_utils as pb_utils

from ..placement import Placement
from ..samplers import make_sampler
from ..sampling import conditioning_rows, denoise, initial_latents
from ..spec import DEADLINE, KV, NOISE_PRED, SAMPLE, STEP_BARRIER_PARAMETER, TIMESTEP
from ..geometry import GEOMETRY_FILE, ModelGeometry
from ..step_barrier import BARRIER_METRICS, StepBarrier, table_path, wait_cap_s
from ..step_cache import STEP_METRICS, StepCache
from .common import RequestCancelled, TimeLimitExceeded, config_parameter, infer, model_config, version_dir
from .stage_timing import StageTimer, stage_timing_enabled
from .tensors import from_torch, to_torch


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


class LoopMetrics:
    """Counters of the loop (``fields``: ``STEP_METRICS``, ``BARRIER_METRICS``) as Triton custom metrics; each
    request adds what it did."""

    def __init__(self, fields: Mapping[str, tuple[str, str]], labels: dict[str, str]) -> None:
        kind = pb_utils.MetricFamily.COUNTER  # the families must outlive their metrics: keep both
        self.families = {field: pb_utils.MetricFamily(name=name, description=text, kind=kind) for field, (name, text) in fields.items()}
        self.metrics = {field: family.Metric(labels=labels) for field, family in self.families.items()}

    def publish(self, stats: object) -> None:
        for field, metric in self.metrics.items():
            if getattr(stats, field):
                metric.increment(getattr(stats, field))


class DenoisingLoop:
    """The ``scheduler`` entry's inputs -> denoised latents [1, C, f, h, w], one BLS denoiser call per step."""

    def __init__(self, args: dict[str, str]) -> None:
        self.geometry = ModelGeometry.load(version_dir(args) / GEOMETRY_FILE)
        self.samplers = {name: make_sampler(name, self.geometry.scheduler_config) for name in self.geometry.samplers}
        self.placement = Placement.of_instance(args.get("model_instance_kind", ""), args.get("model_instance_device_id", "0"))
        if self.placement.device is not None:
            torch.cuda.set_device(self.placement.device)  # this thread's; run() sets it for every request's thread
        pb_utils.Logger.log_info(f"{args['model_instance_name']}: sampling loop on {self.placement.describe()}")
        labels = {"model": args["model_name"], "version": args["model_version"]}
        self.metrics, self.barrier_metrics = LoopMetrics(STEP_METRICS, labels), LoopMetrics(BARRIER_METRICS, labels)
        # the loops of this server and device send their denoiser calls together (t2vserve.step_barrier); 0: off
        window_us = int(config_parameter(model_config(args), STEP_BARRIER_PARAMETER, "0"))
        table = table_path(os.getppid(), str(self.placement.device or "host"))  # ppid: tritonserver
        self.barrier = StepBarrier(table, window_us) if window_us > 0 else None
        self.host_inputs = 0  # requests whose K/V arrived in host memory
        # Bench (T2V_STAGE_TIMING=1): per request, the milliseconds in BLS denoiser calls, at the barrier and in the loop's
        # own work: update (guidance and the sampler's step) and inputs (the cancellation check, the call's tensors)
        device = self.placement.device
        sync = (lambda: torch.cuda.synchronize(device)) if device is not None else None
        self.timer = StageTimer(args["model_name"], pb_utils.Logger.log_info, sync) if stage_timing_enabled() else None
        self.warm_up()

    def warm_up(self) -> None:
        """The loop's own work once per sampler, on the smallest clip with a denoiser that predicts zeros: CUDA's lazy
        module loading and the samplers' first kernels are paid at load, not by the first request this instance
        serves (each of the SCHEDULER_INSTANCES is its own process, and Triton spreads requests over them)."""
        g = self.geometry
        with self.placement.active():
            latents = initial_latents(g, g.pixel_multiple, g.pixel_multiple, int(g.frames_range().low), 0, self.placement.device or "cpu")
            for sampler in self.samplers.values():
                denoise(lambda entry, sample, t: torch.zeros_like(sample), latents, 2, g.presets.guidance_scale, sampler, g, g.default_precision)

    def _host_input(self, message: str) -> None:
        """A request's K/V came through host memory (the CUDA pool was full): logged at the 1st, 2nd, 4th, 8th, ... time."""
        self.host_inputs += 1
        if self.host_inputs & (self.host_inputs - 1) == 0:
            pb_utils.Logger.log_warn(f"{message} ({self.host_inputs} requests so far)")

    def run(
        self,
        inputs: Mapping[str, "pb_utils.Tensor"],
        is_cancelled: Callable[[], bool],
        on_step: ProgressCallback | None = None,
    ) -> torch.Tensor:
        """Denoise; ``is_cancelled`` is asked before every step, ``on_step`` called after each."""
        with self.placement.active():
            return self._run(inputs, is_cancelled, on_step)

    def _run(self, inputs: Mapping[str, "pb_utils.Tensor"], is_cancelled: Callable[[], bool], on_step: ProgressCallback | None) -> torch.Tensor:
        place = self.placement

        def scalar(name: str) -> Any:
            return inputs[name].as_numpy().reshape(-1)[0]

        steps = int(scalar("STEPS"))
        guard = StepGuard(is_cancelled, float(scalar(DEADLINE)), float(scalar("TIME_LIMIT_S")), steps)
        received = to_torch(inputs[KV])
        kv = place.receive(KV, received, "input from conditioning", self._host_input)  # on the loop's device, moved at most once
        # K/V per denoiser batch: the request's tensor for CFG pairs (as it came, unless it was moved); for a
        # guidance-free call the prompt's row alone, a view of it on its device (DLPack, no copy), made once per request
        kv_rows: dict[int, "pb_utils.Tensor"] = {kv.shape[0]: inputs[KV] if kv is received else from_torch(KV, kv)}
        device = place.loop_device(kv)
        latents = initial_latents(self.geometry, int(scalar("HEIGHT")), int(scalar("WIDTH")), int(scalar("NUM_FRAMES")), int(scalar("SEED")), device)

        timer = self.timer
        if timer is not None:
            timer.start()
        previous_call_s: list[float | None] = [None]  # the last denoiser call's seconds: bounds the barrier's wait

        def denoiser(entry: str, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
            if timer is not None:  # the previous output taken, guided and stepped, this call's rows built (sampling.denoise)
                timer.mark("update")
            guard.check()
            batch = sample.shape[0]
            if batch not in kv_rows:
                kv_rows[batch] = from_torch(KV, conditioning_rows(kv, batch))
            # the denoiser entries batch across requests: TIMESTEP travels as [batch, 1] (see repository.py)
            step_inputs = [from_torch(SAMPLE, sample), from_torch(TIMESTEP, timestep.reshape(-1, 1)), kv_rows[batch]]
            if timer is not None:  # the cancellation check and the call's tensors handed to the Python backend
                timer.mark("inputs")
            if slot is not None:  # the device's other loops' calls first reach the batcher beside this one
                slot.wait_turn(wait_cap_s(previous_call_s[0]))
                if timer is not None:
                    timer.mark("barrier")
            start = time.perf_counter()
            try:
                (output,) = infer(entry, step_inputs, [NOISE_PRED], device=device)  # the output asked for where the loop runs
            finally:
                if slot is not None:
                    slot.returned()
            previous_call_s[0] = time.perf_counter() - start
            if timer is not None:
                timer.mark("bls")
            return place.check(NOISE_PRED, to_torch(output), f"output of {entry}").to(sample.device)

        cache = StepCache(float(scalar("STEP_CACHE")))

        def after_step(done: int, total: int, current: torch.Tensor) -> None:
            guard.done = done
            if on_step is not None:
                if slot is not None:
                    slot.away()  # a progress callback (a preview's decode): not a call the other loops should wait for
                on_step(done, total, current, cache.last_cached)
                if slot is not None:
                    slot.returned()
            if done < total and cache.threshold > 0:
                guard.check()  # the next step may come from the cache, with no denoiser call to check before

        sampler = self.samplers[scalar("SAMPLER").decode("utf-8")]
        precision = scalar("PRECISION").decode("utf-8")
        slot = self.barrier.join() if self.barrier is not None else None  # left in the finally below, whatever happens
        try:
            latents = denoise(denoiser, latents, steps, float(scalar("GUIDANCE_SCALE")), sampler, self.geometry, precision, after_step, cache)
            if timer is not None:
                timer.mark("update")
                timer.finish(steps=steps)
            return latents
        finally:
            self.metrics.publish(cache.stats)
            if slot is not None:
                slot.leave()
                self.barrier_metrics.publish(slot)
