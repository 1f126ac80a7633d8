"""``scheduler``: the sampling loop of the ``t2v`` ensemble (``denoising.DenoisingLoop``), one request at a time.

The K/V tensor arrives once per request (from ``kv_projector``) and is passed unchanged to every
denoiser call. Before every step the loop asks ``request.is_cancelled()`` and checks the request's
deadline (TIME_LIMIT_S), so a cancelled or overdue request frees this instance at the next step.
"""

from __future__ import annotations

import triton_python_backend_utils as pb_utils

from ..spec import LATENTS
from .common import error_response, from_torch, model_config
from .denoising import DenoisingLoop


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        self.loop = DenoisingLoop(args)
        self.input_names = [tensor["name"] for tensor in model_config(args)["input"]]

    def execute(self, requests: list) -> list:
        return [self._one(request) for request in requests]

    def _one(self, request) -> "pb_utils.InferenceResponse":
        try:
            inputs = {name: pb_utils.get_input_tensor_by_name(request, name) for name in self.input_names}
            latents = self.loop.run(inputs, request.is_cancelled)
            return pb_utils.InferenceResponse([from_torch(LATENTS, latents)])
        except Exception as exc:
            return error_response(exc)
