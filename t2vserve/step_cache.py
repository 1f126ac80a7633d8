"""Step caching: serve a denoising step with the previous denoiser output when that output barely changes.

The denoiser is an opaque engine slot (TensorRT plan, ONNX Runtime, torch runner), so the cache sits in
the sampling loop (``sampling.denoise``) as a wrapper around the ``Denoiser`` callable and decides on
what the loop sees: the denoiser's outputs. Per request, with threshold ``T`` (request parameter
STEP_CACHE; 0 = off, the wrapper then only counts steps):

* After every **computed** step k the rate ``r`` = relative L1 change of the output against the
  previous computed one, per step between them: ``mean|o_k - o_j| / mean|o_j| / (k - j)``.
* The **estimate** ``e`` is the relative L1 distance between the last computed output and the one the
  denoiser would give now, extrapolated at the last measured rate: every skipped step adds ``r``
  (a computed step resets it to 0).
* Step k is **skipped** (its output is the last computed one, reused as is, the denoiser not called)
  when ``e + r < T`` and fewer than ``STEP_CACHE_MAX_CONSECUTIVE_SKIPS`` steps in a row were skipped.
  Always computed: the first two steps (a rate needs two outputs), the last step, and any step whose
  denoiser entry or sample shape differs from the last computed one (a new expert of Wan2.2 A14B
  starts its own estimate).

What it follows: TeaCache (Liu et al., 2024, "Timestep Embedding Tells: It's Time to Cache for Video
Diffusion Model"; diffusers ``hooks/teacache.py``) accumulates a relative L1 distance over steps and
reuses the cached result while the sum stays under ``rel_l1_thresh``, always computing the first and the
last step; MagCache (Ma et al., 2025, "MagCache: Fast Video Generation with Magnitude-Aware Cache";
diffusers ``hooks/mag_cache.py``) accumulates an error estimate against a threshold, bounds consecutive
skips (``max_skip_steps``, K) and never skips the first steps; First-Block-Cache (para-attn, diffusers ``hooks/first_block_cache.py``)
compares the relative L1 change of a residual with a threshold. Those read the model's inside (the
timestep-modulated input, the block residuals, calibrated magnitude ratios); an engine slot shows only
its output, so the rate here is measured on outputs already computed and extrapolated, as EasyCache
(Zhou et al., 2025, "Less is Enough: Training-Free Video Diffusion Acceleration via Runtime-Adaptive
Caching") does with its runtime transformation rate: no per-model calibration. Unlike them it reuses the
whole output (both CFG halves) rather than adding a residual to a new input: the loop has no residual.

Cost: one host sync per computed step while caching is on (the rate's ``.item()``, which the next
decision needs), none on a skipped step and none with the cache off; the output of the last computed
step is held (no copy). Assumes one denoiser call per step, as ``sampling.denoise`` makes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

import torch

from .sampling import Denoiser
from .spec import STEP_CACHE_MAX_CONSECUTIVE_SKIPS

#: Prometheus counters of the sampling loop (Triton custom metrics, labels model and version):
#: field of ``StepCacheStats`` -> (name, description). Denoiser calls = steps - skipped.
STEP_METRICS = {
    "steps": ("t2v_denoising_steps_total", "Denoising steps run by the sampling loop (computed or served from the step cache)"),
    "skipped": ("t2v_step_cache_skipped_total", "Denoising steps served from the step cache (STEP_CACHE): no denoiser call"),
}


def read_step_metrics(text: str, metrics: Mapping[str, tuple[str, str]] = STEP_METRICS) -> dict[tuple[str, str], float]:
    """(``metrics`` field, model label) -> value, from the text of Triton's metrics endpoint (``metrics``: the loop's
    ``STEP_METRICS`` or ``step_barrier.BARRIER_METRICS``)."""
    values: dict[tuple[str, str], float] = {}
    for key, (name, _) in metrics.items():
        for model, value in re.findall(rf'^{name}{{[^}}]*model="([^"]+)"[^}}]*}} (\S+)$', text, re.M):
            values[key, model] = values.get((key, model), 0.0) + float(value)
    return values


def relative_l1(current: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """mean |current - previous| / mean |previous|, a 0-d float32 tensor on their device (no host sync)."""
    previous = previous.float()
    return (current.float() - previous).abs().mean() / previous.abs().mean().clamp_min(1e-12)


@dataclass
class StepCacheStats:
    """What one request's loop did: steps run, and which of them (0-based) reused the previous output."""

    steps: int = 0
    skipped_steps: list[int] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return len(self.skipped_steps)

    @property
    def computed(self) -> int:
        """Denoiser calls."""
        return self.steps - self.skipped


class StepCache:
    """One request's step cache (threshold ``threshold``; 0: off); ``wrap`` puts it around a denoiser."""

    def __init__(self, threshold: float, max_consecutive_skips: int = STEP_CACHE_MAX_CONSECUTIVE_SKIPS) -> None:
        if threshold < 0 or max_consecutive_skips < 0:
            raise ValueError(f"threshold and max_consecutive_skips must be >= 0, got {threshold}, {max_consecutive_skips}")
        self.threshold, self.max_consecutive_skips = float(threshold), max_consecutive_skips
        self.stats = StepCacheStats()
        self.last_cached = False  # whether the latest step reused the previous output
        self._output: torch.Tensor | None = None  # the last computed output
        self._key: tuple | None = None  # its (entry, sample shape)
        self._index = -1  # its step
        self._rate: float | None = None  # relative change per step, from the last two computed outputs
        self._estimate = 0.0  # relative change accumulated since the last computed step
        self._consecutive = 0

    def _skips(self, index: int, steps: int, key: tuple) -> bool:
        """Whether step ``index`` of ``steps`` may reuse the last computed output (the rule in the module docstring)."""
        if self.threshold <= 0 or self._rate is None or key != self._key or index == steps - 1:
            return False
        return self._consecutive < self.max_consecutive_skips and self._estimate + self._rate < self.threshold

    def _computed(self, index: int, key: tuple, output: torch.Tensor) -> None:
        if self.threshold <= 0:
            return
        same = self._output is not None and key == self._key
        self._rate = float(relative_l1(output, self._output).item()) / (index - self._index) if same else None
        self._output, self._key, self._index = output, key, index
        self._estimate, self._consecutive = 0.0, 0

    def wrap(self, denoiser: Denoiser, steps: int) -> Denoiser:
        """``denoiser`` behind this cache, for a loop of ``steps`` steps with one call each."""

        def cached(entry: str, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
            index, key = self.stats.steps, (entry, tuple(sample.shape))
            self.stats.steps += 1
            self.last_cached = self._skips(index, steps, key)
            if self.last_cached:
                assert self._output is not None and self._rate is not None
                self._estimate += self._rate
                self._consecutive += 1
                self.stats.skipped_steps.append(index)
                return self._output
            output = denoiser(entry, sample, timestep)
            self._computed(index, key, output)
            return output

        return cached
