"""What every model family provides to export and serving."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class EngineGraph:
    """One engine slot as an exportable graph: module, named example inputs, outputs, dynamic axes."""

    name: str
    module: nn.Module
    example_inputs: dict[str, torch.Tensor]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]

    @property
    def input_names(self) -> list[str]:
        return list(self.example_inputs)
