"""One sampler interface for the scheduler loop: DDIM for epsilon/v models, Euler and UniPC for flow models.

A ``Sampler`` is stateless and shared by concurrent requests; ``trajectory(steps)`` returns a new per-request
object that holds the model-input timesteps and any multistep state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from t2vserve.ddim import DDIM
from t2vserve.flow import FlowEuler, FlowUniPC


class Trajectory(Protocol):
    """The steps of one request. ``timesteps``: the model-input timestep of each step, high noise first."""

    timesteps: list[float]

    def step(self, index: int, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """x_{i+1} from x_i and the model output at step ``index``."""
        ...


class Sampler(Protocol):
    """A stateless sampler configured from a model's scheduler config."""

    name: str

    def trajectory(self, steps: int) -> Trajectory:
        """A new per-request trajectory of ``steps`` steps."""
        ...


@dataclass(frozen=True)
class DDIMTrajectory:
    """DDIM's integer timesteps (as floats) and its stateless update."""

    ddim: DDIM
    steps: int
    timesteps: list[float]

    def step(self, index: int, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """x_{t-1} from x_t, with t the ``index``-th timestep."""
        return self.ddim.step(model_output, int(self.timesteps[index]), sample, self.steps)


class DDIMSampler:
    """Adapter of ``t2vserve.ddim.DDIM`` (eta = 0) to the sampler interface."""

    name = "ddim"

    def __init__(self, config: dict[str, Any]) -> None:
        self.ddim = DDIM(config)

    def trajectory(self, steps: int) -> DDIMTrajectory:
        """The DDIM timesteps of a ``steps``-step trajectory."""
        return DDIMTrajectory(self.ddim, steps, [float(t) for t in self.ddim.timesteps(steps)])


SAMPLERS: dict[str, type] = {"ddim": DDIMSampler, "euler": FlowEuler, "unipc": FlowUniPC}


def make_sampler(name: str, scheduler_config: dict[str, Any]) -> Sampler:
    """The sampler ``name`` configured from a model's scheduler config."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; known samplers: {', '.join(sorted(SAMPLERS))}")
    sampler: Sampler = SAMPLERS[name](scheduler_config)
    return sampler
