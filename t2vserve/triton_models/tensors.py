"""Triton tensors <-> torch tensors over DLPack, on the device they live on (no copy)."""

from __future__ import annotations

import torch
import triton_python_backend_utils as pb_utils


def to_torch(tensor: "pb_utils.Tensor") -> torch.Tensor:
    """A Triton tensor as a torch tensor on the device it already lives on (no copy)."""
    return torch.from_dlpack(tensor.to_dlpack())


def from_torch(name: str, tensor: torch.Tensor) -> "pb_utils.Tensor":
    """A torch tensor as a Triton tensor (no copy). The tensor itself goes to ``Tensor.from_dlpack``, not a capsule:
    for a CUDA tensor the Python backend then calls its ``__dlpack__(stream=...)``, which makes that stream wait for
    the work torch queued on the tensor, and synchronizes it, so Triton never reads memory still being written."""
    return pb_utils.Tensor.from_dlpack(name, tensor.contiguous())
