"""DDIM timesteps and updates equal diffusers' DDIMScheduler (same config) to 1e-5."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from t2vserve.ddim import DDIM
from t2vserve.families.unet3d import SCHEDULER_CONFIG

CONFIGS = {
    "modelscope": {},
    "trailing": {"timestep_spacing": "trailing"},
    "linspace": {"timestep_spacing": "linspace"},
    "v_prediction": {"prediction_type": "v_prediction"},
    "sample_prediction": {"prediction_type": "sample"},
    "clip_linear_alpha_one": {"clip_sample": True, "beta_schedule": "linear", "set_alpha_to_one": True, "steps_offset": 0},
    "cosine": {"beta_schedule": "squaredcos_cap_v2"},
    "zero_snr_v_trailing": {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction", "timestep_spacing": "trailing"},
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("steps", [1, 7, 25, 50])
def test_ddim_matches_diffusers(name: str, steps: int) -> None:
    config = {**SCHEDULER_CONFIG, **CONFIGS[name]}
    reference, ours = DDIMScheduler(**config), DDIM(config)
    reference.set_timesteps(steps)
    np.testing.assert_array_equal(ours.timesteps(steps), reference.timesteps.numpy())

    generator = torch.Generator().manual_seed(steps)
    expected = torch.randn(1, 4, 3, 8, 8, generator=generator)
    actual = expected.clone()
    for t in reference.timesteps:
        model_output = torch.randn(expected.shape, generator=generator)
        expected = reference.step(model_output, t, expected, eta=0.0).prev_sample
        actual = ours.step(model_output, int(t), actual, steps)
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_ddim_refuses_unsupported_options() -> None:
    with pytest.raises(NotImplementedError):
        DDIM({**SCHEDULER_CONFIG, "thresholding": True})
    with pytest.raises(ValueError, match="steps must be"):
        DDIM(SCHEDULER_CONFIG).timesteps(0)
