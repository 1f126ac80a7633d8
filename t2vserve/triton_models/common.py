"""Helpers shared by the Python-backend models: BLS calls, errors, config access (no torch: ``postprocess`` stays light;
tensor exchange with torch is ``tensors.py``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import triton_python_backend_utils as pb_utils

from ..params import ParameterError, read_parameter_error

if TYPE_CHECKING:
    import torch


class BLSError(RuntimeError):
    """A model called through BLS answered with an error; ``code`` is its Triton error code."""

    def __init__(self, model_name: str, message: str, code: int | None = None) -> None:
        super().__init__(f"model '{model_name}' failed: {message}")
        self.code, self.stage_message = code, message


class RequestCancelled(RuntimeError):
    """The client cancelled the request (or went away); found at the next denoising step."""


class TimeLimitExceeded(RuntimeError):
    """The request ran past its TIME_LIMIT_S; the message names the parameter."""


def version_dir(args: dict[str, str]) -> Path:
    return Path(args["model_repository"]) / args["model_version"]


def model_config(args: dict[str, str]) -> dict[str, Any]:
    return json.loads(args["model_config"])


def config_parameter(config: dict[str, Any], key: str, default: str = "") -> str:
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


def optional_input(request: "pb_utils.InferenceRequest", name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def error_response(exc: BaseException) -> "pb_utils.InferenceResponse":
    """The Triton error for ``exc``; the server keeps serving.

    INVALID_ARG for bad parameters, also when a stage called through BLS refused them (its message as
    is; BLS responses reach the caller with code INTERNAL in Triton 2.51, so a stage's parameter error
    is recognised by its form, ``NAME: message``). CANCELLED for a cancelled request, UNAVAILABLE for
    a request past its time limit (Triton has no DEADLINE_EXCEEDED), INTERNAL for everything else.
    """
    TritonError = pb_utils.TritonError
    if isinstance(exc, ParameterError):
        error = TritonError(str(exc), TritonError.INVALID_ARG)
    elif isinstance(exc, BLSError) and (exc.code == TritonError.INVALID_ARG or read_parameter_error(exc.stage_message)):
        error = TritonError(exc.stage_message, TritonError.INVALID_ARG)
    elif isinstance(exc, (RequestCancelled, TimeLimitExceeded)):  # a request stopped early: worth a line in the log
        pb_utils.Logger.log_info(str(exc))
        error = TritonError(str(exc), TritonError.CANCELLED if isinstance(exc, RequestCancelled) else TritonError.UNAVAILABLE)
    else:
        error = TritonError(f"{type(exc).__name__}: {exc}", TritonError.INTERNAL)
    return pb_utils.InferenceResponse(error=error)


def infer(
    model_name: str, inputs: list["pb_utils.Tensor"], output_names: list[str], device: "torch.device | None" = None
) -> list["pb_utils.Tensor"]:
    """One BLS call; an error response raises BLSError naming the model (never ignored). ``device``: the outputs are
    asked for in its memory (``preferred_memory``: that GPU's, or the host's); None: where the model produced them."""
    memory = {}
    if device is not None:
        kind = pb_utils.TRITONSERVER_MEMORY_GPU if device.type == "cuda" else pb_utils.TRITONSERVER_MEMORY_CPU
        memory["preferred_memory"] = pb_utils.PreferredMemory(kind, int(device.index or 0) if device.type == "cuda" else 0)
    request = pb_utils.InferenceRequest(model_name=model_name, inputs=inputs, requested_output_names=output_names, **memory)
    response = request.exec()
    if response.has_error():
        raise BLSError(model_name, response.error().message(), response.error().code())
    outputs = [pb_utils.get_output_tensor_by_name(response, name) for name in output_names]
    missing = [name for name, tensor in zip(output_names, outputs) if tensor is None]
    if missing:
        raise BLSError(model_name, f"returned no {missing}")
    return outputs
