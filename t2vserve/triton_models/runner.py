"""Engine slots (``text_encoder``, ``kv_projector``, ``unet``, ``unet_int8``, ``unet_fp8``, ``vae_decoder``) run by a runner.

Used where TensorRT is absent: the entry's ``configs/<runner>.pbtxt`` selects this model with a
``runner`` parameter (``onnxruntime`` or ``torch``). Requests that Triton's dynamic batcher hands
over together are concatenated along the batch dimension, run once and split again.
"""

from __future__ import annotations

import os

import torch
import triton_python_backend_utils as pb_utils

from ..runners import KERNELS_LOG, batch_or_each, make_runner
from .common import config_parameter, error_response, model_config, version_dir
from .stage_timing import StageTimer, stage_timing_enabled
from .tensors import from_torch, to_torch


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = model_config(args)
        self.input_names = [tensor["name"] for tensor in config["input"]]
        self.output_names = [tensor["name"] for tensor in config["output"]]
        self.batched = int(config.get("max_batch_size", 0)) > 0
        # inputs declared with a reshape (per-sample scalars sent as [batch, 1]) reach the graph as [batch]
        self.reshapes = {t["name"]: [int(d) for d in t["reshape"].get("shape", [])] for t in config["input"] if "reshape" in t}
        self.runner = make_runner(config_parameter(config, "runner", "onnxruntime"), version_dir(args), config)
        pb_utils.Logger.log_info(f"{args['model_name']}: {KERNELS_LOG}{self.runner.kernels}")  # read by the benchmarks
        warm_up = getattr(self.runner, "warm_up", None)
        if warm_up is not None and config_parameter(config, "warmup", "true") != "false":
            seconds = warm_up()  # READY only once every batch size the batcher can form has run (compiled)
            if seconds:
                timings = ", ".join(f"batch {size}: {s:.1f} s" for size, s in seconds.items())
                pb_utils.Logger.log_info(f"{args['model_name']}: warmed up ({timings})")
        # Debug (bench on the GPU machine): T2V_ASSERT_DEVICE=cuda checks every input arrives on the GPU.
        self.assert_device = os.environ.get("T2V_ASSERT_DEVICE") or None
        # Bench (T2V_STAGE_TIMING=1): each execution's inputs / run / outputs milliseconds in the server log
        device = getattr(self.runner, "device", None)
        sync = (lambda: torch.cuda.synchronize(device)) if device is not None and device.type == "cuda" else None
        self.timer = StageTimer(args["model_name"], pb_utils.Logger.log_info, sync) if stage_timing_enabled() else None

    def _inputs(self, request) -> dict[str, torch.Tensor]:
        inputs = {name: to_torch(pb_utils.get_input_tensor_by_name(request, name)) for name in self.input_names}
        for name, shape in self.reshapes.items():
            inputs[name] = inputs[name].reshape(inputs[name].shape[0], *shape)
        if self.assert_device is not None:
            for name, tensor in inputs.items():
                if name != "INPUT_IDS" and tensor.device.type != self.assert_device:
                    raise AssertionError(f"input {name} arrived on {tensor.device}, expected {self.assert_device}")
        return inputs

    def execute(self, requests: list) -> list:
        if self.batched:  # a failed batch is logged to the server log, then run one by one
            return batch_or_each(requests, self._execute_batch, self._execute_one, pb_utils.Logger.log_warn)
        return [self._execute_one(request) for request in requests]

    def _execute_one(self, request) -> "pb_utils.InferenceResponse":
        try:
            return self._execute_batch([request])[0]
        except Exception as exc:
            return error_response(exc)

    def _execute_batch(self, requests: list) -> list:
        timer = self.timer
        if timer is not None:
            timer.start()
        per_request = [self._inputs(request) for request in requests]
        sizes = [inputs[self.input_names[0]].shape[0] for inputs in per_request]
        # one request (the unbatched entries, a lone request): its tensors as they are, no copy
        joined = per_request[0] if len(per_request) == 1 else {name: torch.cat([inputs[name] for inputs in per_request]) for name in self.input_names}
        if timer is not None:
            timer.mark("inputs")
        outputs = self.runner.run(joined)
        if timer is not None:
            timer.mark("run")
        split = {name: [outputs[name]] if len(requests) == 1 else torch.split(outputs[name], sizes) for name in self.output_names}
        responses = [
            pb_utils.InferenceResponse([from_torch(name, split[name][i]) for name in self.output_names])
            for i in range(len(requests))
        ]
        if timer is not None:
            timer.mark("outputs")
            timer.finish(batch=sum(sizes))
        return responses
