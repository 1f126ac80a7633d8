"""``scheduler``: the sampling loop, calling the denoiser entries through BLS with the request's packed K/V.

PRECISION picks the track (the model's ``ModelGeometry.tracks``: unet3d int8 -> ``unet_int8``, fp16 ->
``unet``; wan22 bf16 -> ``transformer`` [+ ``transformer_2``, the low-noise expert below the boundary
timestep]); SAMPLER the sampler (unet3d: ddim; wan22: unipc, euler).

The K/V tensor arrives once per request (from ``kv_projector``) and is passed unchanged to every
denoiser call. Latents are created on the K/V's device, so with a GPU runner the whole loop stays on
the GPU (DLPack in and out of BLS, no host round trip per step).
"""

from __future__ import annotations

import os

import triton_python_backend_utils as pb_utils

from ..samplers import make_sampler
from ..sampling import denoise, initial_latents
from ..spec import GEOMETRY_FILE, KV, LATENTS, NOISE_PRED, SAMPLE, TIMESTEP, ModelGeometry
from .common import config_parameter, error_response, from_torch, infer, model_config, to_torch, version_dir


def _assert_on(device_type: str, **tensors) -> None:
    for name, tensor in tensors.items():
        if tensor.device.type != device_type:
            raise AssertionError(f"{name} is on {tensor.device}, expected {device_type}")


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        self.geometry = ModelGeometry.load(version_dir(args) / GEOMETRY_FILE)
        self.samplers = {name: make_sampler(name, self.geometry.scheduler_config) for name in self.geometry.samplers}
        # Debug: with parameter assert_device (e.g. "cuda"), every step checks that K/V, latents and the
        # denoiser output live on that device type, i.e. nothing took a host round trip.
        self.assert_device = config_parameter(model_config(args), "assert_device", "") or os.environ.get("T2V_ASSERT_DEVICE") or None

    def execute(self, requests: list) -> list:
        return [self._one(request) for request in requests]

    def _scalar(self, request, name: str):
        return pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)[0]

    def _one(self, request) -> "pb_utils.InferenceResponse":
        try:
            kv_tensor = pb_utils.get_input_tensor_by_name(request, KV)
            kv = to_torch(kv_tensor)
            latents = initial_latents(
                self.geometry,
                int(self._scalar(request, "HEIGHT")),
                int(self._scalar(request, "WIDTH")),
                int(self._scalar(request, "NUM_FRAMES")),
                int(self._scalar(request, "SEED")),
                device=kv.device,
            )

            def denoiser(entry, sample, timestep):
                # the denoiser entries batch across requests: TIMESTEP travels as [batch, 1] (see repository.py)
                inputs = [from_torch(SAMPLE, sample), from_torch(TIMESTEP, timestep.reshape(-1, 1)), kv_tensor]
                (output,) = infer(entry, inputs, [NOISE_PRED])
                output = to_torch(output)
                if self.assert_device is not None:
                    _assert_on(self.assert_device, kv=kv, sample=sample, output=output)
                return output.to(sample.device)

            latents = denoise(
                denoiser,
                latents,
                int(self._scalar(request, "STEPS")),
                float(self._scalar(request, "GUIDANCE_SCALE")),
                self.samplers[self._scalar(request, "SAMPLER").decode("utf-8")],
                self.geometry,
                self._scalar(request, "PRECISION").decode("utf-8"),
            )
            return pb_utils.InferenceResponse([from_torch(LATENTS, latents)])
        except Exception as exc:
            return error_response(exc)
