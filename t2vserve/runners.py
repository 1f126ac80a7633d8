"""Runners for the engine slots: execute one exported graph on named torch tensors.

``onnxruntime`` runs ``model.onnx`` on the CPU (the embedded default). On GPU hosts the slots are
TensorRT plans served by Triton's own TensorRT backend, so no runner is involved there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch


class Runner(Protocol):
    def run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...


class OnnxRuntimeRunner:
    """ONNX Runtime on the CPU over ``<version_dir>/model.onnx``."""

    def __init__(self, version_dir: Path, config: dict[str, Any]) -> None:
        from .onnx_export import onnxruntime_session

        threads = int(config.get("parameters", {}).get("intra_op_threads", {}).get("string_value", "0") or 0)
        self.session = onnxruntime_session(Path(version_dir) / "model.onnx", threads or int(os.environ.get("T2V_ORT_THREADS", "0")))
        self.output_names = [output.name for output in self.session.get_outputs()]

    def run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        feeds = {name: tensor.cpu().numpy() for name, tensor in inputs.items()}
        outputs = self.session.run(self.output_names, feeds)
        return {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in zip(self.output_names, outputs)}


RUNNERS = {"onnxruntime": OnnxRuntimeRunner}


def make_runner(kind: str, version_dir: Path, config: dict[str, Any]) -> Runner:
    try:
        return RUNNERS[kind](version_dir, config)
    except KeyError:
        raise ValueError(f"unknown runner {kind!r}; known: {sorted(RUNNERS)}") from None
