"""Engine slots (``text_encoder``, ``kv_projector``, ``unet``, ``vae_decoder``) run by a Python-backend runner.

Used where TensorRT is absent: the entry's ``configs/<runner>.pbtxt`` selects this model with a
``runner`` parameter, and the runner executes the artifact in the version directory.
"""

from __future__ import annotations

import triton_python_backend_utils as pb_utils

from ..runners import make_runner
from .common import config_parameter, error_response, from_torch, model_config, to_torch, version_dir


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = model_config(args)
        self.input_names = [tensor["name"] for tensor in config["input"]]
        self.output_names = [tensor["name"] for tensor in config["output"]]
        self.runner = make_runner(config_parameter(config, "runner", "onnxruntime"), version_dir(args), config)

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                inputs = {name: to_torch(pb_utils.get_input_tensor_by_name(request, name)) for name in self.input_names}
                outputs = self.runner.run(inputs)
                responses.append(pb_utils.InferenceResponse([from_torch(name, outputs[name]) for name in self.output_names]))
            except Exception as exc:
                responses.append(error_response(exc))
        return responses
