"""Helpers shared by the Python-backend models: tensor exchange over DLPack, errors, config access."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from torch.utils.dlpack import to_dlpack

from ..params import ParameterError


class BLSError(RuntimeError):
    """A model called through BLS answered with an error."""


def version_dir(args: dict[str, str]) -> Path:
    return Path(args["model_repository"]) / args["model_version"]


def model_config(args: dict[str, str]) -> dict[str, Any]:
    return json.loads(args["model_config"])


def config_parameter(config: dict[str, Any], key: str, default: str = "") -> str:
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


def to_torch(tensor: "pb_utils.Tensor") -> torch.Tensor:
    """A Triton tensor as a torch tensor on the device it already lives on (no copy)."""
    return torch.from_dlpack(tensor.to_dlpack())


def from_torch(name: str, tensor: torch.Tensor) -> "pb_utils.Tensor":
    return pb_utils.Tensor.from_dlpack(name, to_dlpack(tensor.contiguous()))


def optional_input(request: "pb_utils.InferenceRequest", name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def error_response(exc: BaseException) -> "pb_utils.InferenceResponse":
    """INVALID_ARG for bad parameters, INTERNAL for everything else; the server keeps serving."""
    if isinstance(exc, ParameterError):
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG))
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(exc).__name__}: {exc}", pb_utils.TritonError.INTERNAL))


def infer(model_name: str, inputs: list["pb_utils.Tensor"], output_names: list[str]) -> list["pb_utils.Tensor"]:
    """One BLS call; an error response raises BLSError naming the model (never ignored)."""
    request = pb_utils.InferenceRequest(model_name=model_name, inputs=inputs, requested_output_names=output_names)
    response = request.exec()
    if response.has_error():
        raise BLSError(f"model '{model_name}' failed: {response.error().message()}")
    outputs = [pb_utils.get_output_tensor_by_name(response, name) for name in output_names]
    missing = [name for name, tensor in zip(output_names, outputs) if tensor is None]
    if missing:
        raise BLSError(f"model '{model_name}' returned no {missing}")
    return outputs
