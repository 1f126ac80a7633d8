"""``postprocess``: decoded frames -> uint8 VIDEO [F, H, W, 3] and an H.264 MP4, after the output check.

Config parameter ``output_check``: a check of ``t2vserve.safety.OUTPUT_CHECKS`` or ``package.module:function``
(default ``none``); a clip it refuses is answered with INVALID_ARG naming its category.
"""

from __future__ import annotations

import numpy as np
import triton_python_backend_utils as pb_utils

from ..safety import load_output_check, run_output_check
from ..spec import FRAMES, MP4, VIDEO
from ..video import encode_mp4, to_uint8_frames
from .common import config_parameter, error_response, model_config, to_torch


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        self.output_check = load_output_check(config_parameter(model_config(args), "output_check", "none"))

    def execute(self, requests: list) -> list:
        return [self._one(request) for request in requests]

    def _one(self, request) -> "pb_utils.InferenceResponse":
        try:
            frames = to_torch(pb_utils.get_input_tensor_by_name(request, FRAMES)).cpu().numpy()
            fps = int(pb_utils.get_input_tensor_by_name(request, "FPS").as_numpy().reshape(-1)[0])
            video = to_uint8_frames(frames)
            run_output_check(self.output_check, video)
            mp4 = np.array([encode_mp4(video, fps)], dtype=np.object_)
            return pb_utils.InferenceResponse([pb_utils.Tensor(VIDEO, video), pb_utils.Tensor(MP4, mp4)])
        except Exception as exc:
            return error_response(exc)
