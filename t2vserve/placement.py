"""Where a sampling loop's tensors live: the instance's device, and the checks of GPU mode.

The sampling loops (``scheduler``, ``t2v_stream``) are GPU instances where the engine slots run on the GPU
(``config.pbtxt``: TensorRT; ``configs/torch.pbtxt``: the torch runner on CUDA) and CPU instances elsewhere
(``configs/onnxruntime.pbtxt``, ``configs/torch-cpu.pbtxt``); ``server.MODEL_CONFIGS`` says which is which.

* **GPU mode** (``model_instance_kind`` GPU): the loop runs on ``cuda:<model_instance_device_id>``. The
  request's K/V is moved there once (a no-op where it already is; from the host, reported: Triton's CUDA memory
  pool was full), the latents are drawn there, every denoiser output is asked for there (BLS
  ``preferred_memory``), and a denoiser output that arrives on the host is an error naming it, where it came
  from and the device expected: a host round trip per step would otherwise only show as a slower server (a
  runner on the CPU, ``FORCE_CPU_ONLY_INPUT_TENSORS``, the Python backend without the CUDA driver API). A
  tensor on another GPU is moved (Triton may run a denoiser instance on any GPU).
* **CPU mode** (any other kind): as before GPU mode existed: the loop runs on the device the K/V arrived on
  (its denoiser outputs asked for there too), unchecked.

Pure torch, no Triton: ``triton_models/denoising.py`` applies it; the tests call it directly.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch

#: ``model_instance_kind`` of a KIND_GPU instance, as the Python backend passes it (``args["model_instance_kind"]``).
GPU_KIND = "GPU"


class HostTensorError(RuntimeError):
    """A GPU-mode loop received a tensor in host memory."""


@dataclass(frozen=True)
class Placement:
    """The device of one loop instance; ``device`` None: CPU mode (the loop follows its K/V)."""

    device: torch.device | None = None

    @classmethod
    def of_instance(cls, kind: str, device_id: str | int) -> "Placement":
        """From the Python backend's ``args["model_instance_kind"]`` and ``args["model_instance_device_id"]``."""
        return cls(torch.device("cuda", int(device_id)) if kind == GPU_KIND else None)

    @property
    def gpu(self) -> bool:
        return self.device is not None

    def describe(self) -> str:
        if self.device is None:
            return "the device its K/V arrives on (CPU instance)"
        return f"{self.device} (GPU instance; denoiser outputs requested in GPU memory {self.device.index})"

    def active(self) -> ContextManager[object]:
        """Makes the instance's GPU the current CUDA device (per thread) for a request; nothing in CPU mode."""
        return torch.cuda.device(self.device) if self.device is not None else contextlib.nullcontext()

    def check(self, name: str, tensor: torch.Tensor, origin: str) -> torch.Tensor:
        """``tensor`` as received; in GPU mode a host tensor raises ``HostTensorError`` naming ``name`` and ``origin``."""
        if self.device is not None and tensor.device.type != "cuda":
            raise HostTensorError(
                f"{name} ({origin}) arrived on {tensor.device}, expected {self.device}: this loop is a GPU instance "
                "and takes no host round trips. Serve a GPU runner in the engine slots (config.pbtxt, configs/torch.pbtxt "
                "on CUDA) or a CPU config (configs/onnxruntime.pbtxt, configs/torch-cpu.pbtxt), and keep "
                "FORCE_CPU_ONLY_INPUT_TENSORS \"no\""
            )
        return tensor

    def receive(self, name: str, tensor: torch.Tensor, origin: str, on_host: Callable[[str], None] | None = None) -> torch.Tensor:
        """An input of a request on the loop's device: moved at most once, the same tensor where it already is.

        In GPU mode a host tensor is moved and reported to ``on_host``, not refused: Triton hands an ensemble's
        tensors over in host memory once its CUDA memory pool is full (more requests waiting in the ensemble
        than the pool holds: Wan2.2-5B's K/V is 755 MB a request), and one copy per request beats a failed request.
        """
        if self.device is None:
            return tensor
        if tensor.device.type != "cuda" and on_host is not None:
            on_host(f"{name} ({origin}) arrived on {tensor.device}, moved to {self.device} once for this request: Triton's "
                    "CUDA memory pool was full; a larger --cuda-memory-pool-byte-size (ModelGeometry.transfer_pool_bytes) avoids the copy")
        return tensor.to(self.device, non_blocking=True)

    def loop_device(self, kv: torch.Tensor) -> torch.device:
        """Where the latents are drawn: the instance's GPU, else the K/V's device."""
        return self.device if self.device is not None else kv.device
