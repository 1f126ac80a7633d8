"""``postprocess``: the clip's uint8 frames -> VIDEO (the same frames) and an H.264 MP4, after the output check.

RETURN_FRAMES false (a client that asks for the MP4 only): VIDEO is answered with 0 frames. The ensemble asks this
step for VIDEO whatever the client asked for, and Triton copies the frames out of the stub: 20 ms a clip at
576x320x24, 100 ms at Wan2.2 480p (GPU round 7, ``compute_output``).

The frames arrive as uint8 [F, H, W, 3]: the ``vae_decoder`` slot converts them where it decodes
(``video.uint8_frames``), so this entry only checks and encodes. It loads without torch, and it has
POSTPROCESS_INSTANCES instances: the clips of a batched step encode at once, beside the next requests' denoising.
Config parameter ``output_check``: a check of ``t2vserve.safety.OUTPUT_CHECKS`` or ``package.module:function``
(default ``none``); a clip it refuses is answered with INVALID_ARG naming its category.
"""

from __future__ import annotations

import numpy as np
import triton_python_backend_utils as pb_utils

from ..safety import load_output_check, run_output_check
from ..spec import FRAMES, MP4, VIDEO
from ..video import encode_mp4
from .common import config_parameter, error_response, model_config, optional_input
from .stage_timing import StageTimer, stage_timing_enabled


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        self.output_check = load_output_check(config_parameter(model_config(args), "output_check", "none"))
        # the first encode in a process pays libav/libx264's one-time set-up (40 ms of CPU on the CI machine), and each
        # of the POSTPROCESS_INSTANCES is its own process: paid here, not by the first request each instance serves
        encode_mp4(np.zeros((2, 64, 64, 3), dtype=np.uint8), 8)
        # Bench (T2V_STAGE_TIMING=1): each request's inputs / check / encode / outputs milliseconds in the server log
        self.timer = StageTimer(args["model_name"], pb_utils.Logger.log_info) if stage_timing_enabled() else None

    def execute(self, requests: list) -> list:
        return [self._one(request) for request in requests]

    def _one(self, request) -> "pb_utils.InferenceResponse":
        timer = self.timer
        try:
            if timer is not None:
                timer.start()
            video = pb_utils.get_input_tensor_by_name(request, FRAMES).as_numpy()  # on the host: FORCE_CPU_ONLY_INPUT_TENSORS
            fps = int(pb_utils.get_input_tensor_by_name(request, "FPS").as_numpy().reshape(-1)[0])
            return_frames = optional_input(request, "RETURN_FRAMES")  # absent (a direct caller): the frames
            if timer is not None:
                timer.mark("inputs")
            run_output_check(self.output_check, video)
            if timer is not None:
                timer.mark("check")
            mp4 = np.array([encode_mp4(video, fps)], dtype=np.object_)
            if timer is not None:
                timer.mark("encode")
            frames = video if return_frames is None or bool(return_frames.reshape(-1)[0]) else video[:0]
            response = pb_utils.InferenceResponse([pb_utils.Tensor(VIDEO, frames), pb_utils.Tensor(MP4, mp4)])
            if timer is not None:
                timer.mark("outputs")
                timer.finish(frames=len(video))
            return response
        except Exception as exc:
            return error_response(exc)
