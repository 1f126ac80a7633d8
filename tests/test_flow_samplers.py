"""Flow samplers equal diffusers' UniPC / FlowMatchEuler schedulers (Wan2.2 config) step by step to 1e-5."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from t2vserve.ddim import DDIM
from t2vserve.flow import FlowEuler, FlowUniPC
from t2vserve.samplers import SAMPLERS, DDIMSampler, Trajectory, make_sampler

# The scheduler_config.json of Wan2.2 TI2V-5B (A14B T2V differs only by flow_shift 12.0).
WAN22: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "prediction_type": "flow_prediction",
    "use_flow_sigmas": True,
    "flow_shift": 5.0,
    "solver_order": 2,
    "solver_type": "bh2",
    "predict_x0": True,
    "lower_order_final": True,
    "disable_corrector": [],
    "thresholding": False,
    "sample_max_value": 1.0,
    "timestep_spacing": "linspace",
    "steps_offset": 0,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "final_sigmas_type": "zero",
    "use_karras_sigmas": False,
}
DDIM_CONFIG = {"beta_schedule": "linear", "clip_sample": False, "timestep_spacing": "leading"}
UNIPC_CONFIGS: dict[str, dict[str, Any]] = {
    "wan_default": {},
    "shift12": {"flow_shift": 12.0},
    "shift3_bh1": {"flow_shift": 3.0, "solver_type": "bh1"},
    "order1": {"solver_order": 1},
    "order3": {"solver_order": 3},
    "no_lower_order_final": {"lower_order_final": False, "final_sigmas_type": "sigma_min"},
    "order3_no_lower_order_final": {"solver_order": 3, "lower_order_final": False, "final_sigmas_type": "sigma_min"},
    "disable_corrector0": {"disable_corrector": [0]},
}
# diffusers' last step is NaN here (from this many steps on): bh1 computes 0 * B(h) = 0 * -inf onto sigma 0, and
# order 3 solves a NaN system for the zero-length sigma_min step. Ours returns the exact limit instead.
NAN_LAST_STEP = {"shift3_bh1": 1, "order3_no_lower_order_final": 3}
SHAPE = (1, 4, 3, 8, 8)
TOL: dict[str, Any] = {"rtol": 1e-5, "atol": 1e-5}


@pytest.mark.parametrize("name", sorted(UNIPC_CONFIGS))
@pytest.mark.parametrize("steps", [1, 2, 7, 25, 50])
def test_unipc_matches_diffusers(name: str, steps: int) -> None:
    config = {**WAN22, **UNIPC_CONFIGS[name]}
    reference, trajectory = UniPCMultistepScheduler(**config), FlowUniPC(config).trajectory(steps)
    reference.set_timesteps(steps)
    assert reference.timesteps.dtype == torch.int64
    assert trajectory.timesteps == reference.timesteps.tolist()

    generator = torch.Generator().manual_seed(steps)
    expected = torch.randn(SHAPE, generator=generator)
    actual = expected.clone()
    for i, t in enumerate(reference.timesteps):
        model_output = torch.randn(SHAPE, generator=generator)
        x0 = actual - float(reference.sigmas[i]) * model_output
        expected = reference.step(model_output, t, expected).prev_sample
        actual = trajectory.step(i, model_output, actual)
        if i == steps - 1 and steps >= NAN_LAST_STEP.get(name, steps + 1):
            assert torch.isnan(expected).any()
            limit = x0 if config["final_sigmas_type"] == "zero" else reference.last_sample
            torch.testing.assert_close(actual, limit, **TOL)
        else:
            torch.testing.assert_close(actual, expected, **TOL)


@pytest.mark.parametrize("shift", [5.0, 12.0, 1.0])
@pytest.mark.parametrize("steps", [1, 7, 25, 50])
def test_euler_matches_diffusers(shift: float, steps: int) -> None:
    reference = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    reference.set_timesteps(steps)
    trajectory = FlowEuler({**WAN22, "flow_shift": shift}).trajectory(steps)
    assert trajectory.timesteps == reference.timesteps.tolist()

    generator = torch.Generator().manual_seed(steps)
    expected = torch.randn(SHAPE, generator=generator)
    actual = expected.clone()
    for i, t in enumerate(reference.timesteps):
        model_output = torch.randn(SHAPE, generator=generator)
        expected = reference.step(model_output, t, expected).prev_sample
        actual = trajectory.step(i, model_output, actual)
        torch.testing.assert_close(actual, expected, **TOL)


def test_euler_reads_shift_of_a_flow_match_config() -> None:
    reference = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=7.0)
    reference.set_timesteps(10)
    assert FlowEuler({"shift": 7.0}).trajectory(10).timesteps == reference.timesteps.tolist()


def test_ddim_adapter_equals_ddim() -> None:
    ddim, trajectory = DDIM(DDIM_CONFIG), make_sampler("ddim", DDIM_CONFIG).trajectory(7)
    assert trajectory.timesteps == [float(t) for t in ddim.timesteps(7)]
    generator = torch.Generator().manual_seed(0)
    sample, model_output = torch.randn(SHAPE, generator=generator), torch.randn(SHAPE, generator=generator)
    expected = ddim.step(model_output, int(trajectory.timesteps[3]), sample, 7)
    assert torch.equal(trajectory.step(3, model_output, sample), expected)


def test_make_sampler_registry() -> None:
    assert {name: type(make_sampler(name, WAN22 if name != "ddim" else DDIM_CONFIG)) for name in SAMPLERS} == {
        "ddim": DDIMSampler,
        "euler": FlowEuler,
        "unipc": FlowUniPC,
    }
    with pytest.raises(ValueError, match="ddim, euler, unipc"):
        make_sampler("dpm++", WAN22)


@pytest.mark.parametrize(
    ("override", "option"),
    [
        ({"use_karras_sigmas": True}, "use_karras_sigmas"),
        ({"use_exponential_sigmas": True}, "use_exponential_sigmas"),
        ({"use_beta_sigmas": True}, "use_beta_sigmas"),
        ({"thresholding": True}, "thresholding"),
        ({"use_dynamic_shifting": True}, "use_dynamic_shifting"),
        ({"shift_terminal": 0.1}, "shift_terminal"),
        ({"prediction_type": "epsilon"}, "prediction_type"),
        ({"use_flow_sigmas": False}, "use_flow_sigmas"),
        ({"predict_x0": False}, "predict_x0"),
        ({"solver_order": 4}, "solver_order"),
        ({"solver_type": "midpoint"}, "solver_type"),
        ({"lower_order_final": False}, "lower_order_final"),
    ],
)
def test_unipc_refuses_unsupported_options(override: dict, option: str) -> None:
    with pytest.raises(NotImplementedError, match=option):
        FlowUniPC({**WAN22, **override})


def test_refusals_of_euler_and_bad_values() -> None:
    for option, value in (("use_dynamic_shifting", True), ("prediction_type", "v_prediction"), ("invert_sigmas", True)):
        with pytest.raises(NotImplementedError, match=option):
            FlowEuler({**WAN22, option: value})
    with pytest.raises(ValueError, match="final_sigmas_type"):
        FlowUniPC({**WAN22, "final_sigmas_type": "one"})
    for sampler in (FlowEuler(WAN22), FlowUniPC(WAN22)):
        with pytest.raises(ValueError, match="steps must be"):
            sampler.trajectory(0)


def test_diffusers_diverges_where_unipc_refuses() -> None:
    """lower_order_final=False onto sigma 0 is inf/NaN in diffusers, which is why FlowUniPC refuses it."""
    reference = UniPCMultistepScheduler(**{**WAN22, "lower_order_final": False})
    reference.set_timesteps(7)
    sample = torch.ones(SHAPE)
    for t in reference.timesteps:
        sample = reference.step(torch.full(SHAPE, 0.5) - sample / 10, t, sample).prev_sample
    assert not torch.isfinite(sample).all()


def test_unipc_steps_run_in_order() -> None:
    trajectory = FlowUniPC(WAN22).trajectory(5)
    with pytest.raises(ValueError, match="expected step 0"):
        trajectory.step(1, torch.zeros(SHAPE), torch.zeros(SHAPE))


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_trajectories_are_isolated(name: str) -> None:
    sampler = make_sampler(name, DDIM_CONFIG if name == "ddim" else WAN22)
    generator = torch.Generator().manual_seed(1)
    starts = [torch.randn(SHAPE, generator=generator) for _ in range(2)]
    outputs = [[torch.randn(SHAPE, generator=generator) for _ in range(6)] for _ in range(2)]

    def run(trajectory: Trajectory, start: torch.Tensor, outs: list[torch.Tensor]) -> torch.Tensor:
        for i, out in enumerate(outs):
            start = trajectory.step(i, out, start)
        return start

    sequential = [run(sampler.trajectory(6), starts[r], outputs[r]) for r in range(2)]
    trajectories, samples = [sampler.trajectory(6), sampler.trajectory(6)], list(starts)
    for i in range(6):
        for r in range(2):
            samples[r] = trajectories[r].step(i, outputs[r][i], samples[r])
    assert all(torch.equal(a, b) for a, b in zip(samples, sequential))


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_steps_never_touch_the_host(name: str) -> None:
    """A whole trajectory on meta tensors: a host sync (.item(), float()) or a CPU tensor in the math would raise."""
    trajectory = make_sampler(name, DDIM_CONFIG if name == "ddim" else WAN22).trajectory(4)
    sample = torch.zeros(SHAPE, device="meta")
    for i in range(4):
        sample = trajectory.step(i, torch.zeros(SHAPE, device="meta"), sample)
    assert sample.device.type == "meta" and sample.dtype == torch.float32
