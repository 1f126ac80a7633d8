"""The step cache's skip rule (``t2vserve.step_cache``) against a plain re-computation, and its parameter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from t2vserve.families import get_family
from t2vserve.params import ParameterError, resolve
from t2vserve.spec import QUALITY_TIERS, STEP_CACHE_MAX_CONSECUTIVE_SKIPS, STEP_CACHE_RANGE
from t2vserve.geometry import KVLayout, ModelGeometry
from t2vserve.step_cache import STEP_METRICS, StepCache, read_step_metrics

#: Denoiser outputs per step as one value each (the output is that value everywhere): slow change in
#: the middle, fast at both ends, as the demo models' outputs change (README, Step caching).
SEQUENCES = {
    "smooth": [1.0, 1.1, 1.15, 1.18, 1.2, 1.21, 1.22, 1.5],
    "shrinking": [4.0, 2.0, 1.5, 1.4, 1.35, 1.33, 1.32, 1.31, 1.305, 1.3],
    "noisy": [1.0, -1.0, 0.9, 1.05, 0.2, 0.21, 0.22, 0.23, 0.5, 0.51],
}


def expected_skips(values: list[float], threshold: float, max_skips: int) -> list[int]:
    """The rule written out on plain floats: rate from the last two computed outputs, extrapolated."""
    skipped: list[int] = []
    computed: list[int] = []  # steps whose output was computed
    estimate, run = 0.0, 0
    for step in range(len(values)):
        rate = None
        if len(computed) >= 2:
            j, k = computed[-2], computed[-1]
            rate = abs(values[k] - values[j]) / abs(values[j]) / (k - j)
        last = step == len(values) - 1
        if threshold > 0 and rate is not None and not last and run < max_skips and estimate + rate < threshold:
            skipped.append(step)
            estimate, run = estimate + rate, run + 1
        else:
            computed.append(step)
            estimate, run = 0.0, 0
    return skipped


def run_cache(values: list[float], threshold: float, max_skips: int = STEP_CACHE_MAX_CONSECUTIVE_SKIPS) -> tuple[list[int], list[float], int]:
    """(skipped steps, the output each step got, denoiser calls) through the wrapper."""
    calls: list[int] = []

    def denoiser(entry: str, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        step = int(timestep[0])
        calls.append(step)
        return torch.full((2, 4, 1, 2, 2), values[step])

    cache = StepCache(threshold, max_skips)
    wrapped = cache.wrap(denoiser, len(values))
    served = [float(wrapped("unet", torch.zeros(2, 4, 1, 2, 2), torch.full((2,), float(step)))[0, 0, 0, 0, 0]) for step in range(len(values))]
    assert cache.stats.steps == len(values) and cache.stats.computed == len(calls)
    return cache.stats.skipped_steps, served, len(calls)


@pytest.mark.parametrize("name", sorted(SEQUENCES))
@pytest.mark.parametrize("threshold", [0.0, 0.05, 0.1, 0.3, 1.0])
@pytest.mark.parametrize("max_skips", [1, 2, 3])
def test_skips_equal_the_rule_written_out(name: str, threshold: float, max_skips: int) -> None:
    values = SEQUENCES[name]
    skipped, served, calls = run_cache(values, threshold, max_skips)
    assert skipped == expected_skips(values, threshold, max_skips)
    assert calls == len(values) - len(skipped)
    for step, value in enumerate(served):  # a skipped step gets the last computed output, the others their own
        source = max(s for s in range(step + 1) if s not in skipped)
        assert value == pytest.approx(values[source])


def test_first_two_and_last_steps_are_computed_and_runs_are_bounded() -> None:
    flat = [1.0] * 12  # no change at all: everything that may be skipped is
    skipped, _, _ = run_cache(flat, 0.5, max_skips=2)
    assert skipped == [2, 3, 5, 6, 8, 9]
    assert run_cache(flat, 0.0)[0] == []  # off
    assert run_cache(flat, 0.5, max_skips=0)[0] == []


def test_known_skips_of_the_smooth_sequence() -> None:
    """By hand. Threshold 0.3: rate 0.1 after steps 0-1 -> skip 2 (estimate 0.1) and 3 (0.2); 4 computed (a run
    of 2), rate 0.1 / 1.1 / 3 = 0.03 -> skip 5, 6; 7 is the last. Threshold 0.15: skip 2 (0.1); 3 computed
    (0.2 >= 0.15), rate 0.08 / 1.1 / 2 = 0.036 -> skip 4, 5; 6 computed (a run of 2); 7 is the last."""
    assert run_cache(SEQUENCES["smooth"], 0.3)[0] == [2, 3, 5, 6]
    assert run_cache(SEQUENCES["smooth"], 0.15)[0] == [2, 4, 5]


def test_another_entry_or_shape_restarts_the_estimate() -> None:
    """A second expert (Wan2.2 A14B) or another sample shape is never served another call's output."""
    cache = StepCache(1.0)
    wrapped = cache.wrap(lambda entry, sample, t: torch.ones(2, 2), 8)
    entries = ["high", "high", "high", "low", "low", "low", "low", "low"]
    for entry in entries:
        wrapped(entry, torch.zeros(2, 2), torch.zeros(2))
    assert cache.stats.skipped_steps == [2, 5, 6]


def test_step_cache_parameter_is_validated_and_tier_defaults_apply() -> None:
    family = get_family("unet3d")
    geometry = ModelGeometry("unet3d", "tiny", 4, 8, 1, 1.0, 77, 32, 100, KVLayout(()), family.tracks(), family.default_precision, ["ddim"])
    prompt = {"PROMPT": np.array([b"a cat"], dtype=object)}
    assert resolve(prompt, geometry).step_cache == 0.0  # off by default
    assert resolve({**prompt, "STEP_CACHE": np.array([0.25], dtype=np.float32)}, geometry).step_cache == pytest.approx(0.25)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ParameterError, match=rf"STEP_CACHE: .* allowed \[0, 1\]"):
            resolve({**prompt, "STEP_CACHE": np.array([bad], dtype=np.float32)}, geometry)
    assert STEP_CACHE_RANGE.describe() == "[0, 1]"
    for tier in QUALITY_TIERS.values():
        tiered = {**prompt, "PRESET": np.array([tier.name.encode()], dtype=object)}
        assert resolve(tiered, geometry).step_cache == tier.step_cache_threshold
        overridden = resolve({**tiered, "STEP_CACHE": np.array([0.0], dtype=np.float32)}, geometry)
        assert overridden.step_cache == 0.0  # an explicit STEP_CACHE wins over the tier's


def test_metrics_are_read_per_model_label() -> None:
    text = "\n".join([
        "# HELP t2v_denoising_steps_total ...",
        't2v_denoising_steps_total{model="scheduler",version="1"} 50',
        't2v_denoising_steps_total{model="t2v_stream",version="1"} 20',
        't2v_step_cache_skipped_total{model="scheduler",version="1"} 12',
        't2v_step_cache_skipped_total{version="1",model="t2v_stream"} 8',
    ])
    assert read_step_metrics(text) == {("steps", "scheduler"): 50, ("steps", "t2v_stream"): 20,
                                       ("skipped", "scheduler"): 12, ("skipped", "t2v_stream"): 8}
    assert [name for name, _ in STEP_METRICS.values()] == ["t2v_denoising_steps_total", "t2v_step_cache_skipped_total"]
