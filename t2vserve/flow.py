"""Flow-matching samplers (Euler, UniPC) for Wan2.2-style scheduler configs, on tensors of any device.

``FlowEuler`` mirrors diffusers' ``FlowMatchEulerDiscreteScheduler`` and ``FlowUniPC`` its
``UniPCMultistepScheduler`` with ``use_flow_sigmas``; tests hold both to diffusers at 1e-5. Every schedule
coefficient is computed once per trajectory, in float32 on the CPU exactly as diffusers does, and applied to the
tensors as a python float, so a step never syncs with the device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

REFUSED_OPTIONS = (
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "thresholding",
    "use_dynamic_shifting",
    "shift_terminal",
    "invert_sigmas",
    "stochastic_sampling",
    "solver_p",
)


def _refuse_unsupported(config: dict[str, Any], who: str, default_prediction: str) -> None:
    for key in REFUSED_OPTIONS:
        if config.get(key):
            raise NotImplementedError(f"{who}: {key}={config[key]!r} is not supported")
    prediction = config.get("prediction_type", default_prediction)
    if prediction != "flow_prediction":
        raise NotImplementedError(f"{who}: prediction_type={prediction!r} is not supported (flow_prediction only)")


def _check_steps(steps: int, num_train_timesteps: int) -> None:
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps must be in [1, {num_train_timesteps}]")


@dataclass(frozen=True)
class EulerTrajectory:
    """Per-request Euler schedule: ``timesteps`` are diffusers' float32 values, ``dts`` the sigma differences."""

    timesteps: list[float]
    dts: list[float]

    def step(self, index: int, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """x_{i+1} = x_i + (sigma_{i+1} - sigma_i) * v_i."""
        return sample.float() + self.dts[index] * model_output.float()


class FlowEuler:
    """Deterministic first-order flow sampler built from the model's scheduler config (``flow_shift`` or ``shift``)."""

    name = "euler"

    def __init__(self, config: dict[str, Any]) -> None:
        _refuse_unsupported(config, "FlowEuler", default_prediction="flow_prediction")
        self.num_train_timesteps = int(config.get("num_train_timesteps", 1000))
        self.shift = float(config.get("flow_shift", config.get("shift", 1.0)))
        # diffusers shifts its float32 training sigmas once at construction and keeps their ends ...
        n = self.num_train_timesteps
        ends = torch.tensor([float(n), 1.0]) / n
        self._sigma_max, self._sigma_min = (self.shift * ends / (1 + (self.shift - 1) * ends)).tolist()

    def trajectory(self, steps: int) -> EulerTrajectory:
        """The ``steps``-step schedule of ``FlowMatchEulerDiscreteScheduler.set_timesteps(steps)``."""
        n = self.num_train_timesteps
        _check_steps(steps, n)
        # ... then spaces the inference sigmas between those (already shifted) ends and shifts them again.
        sigmas = np.linspace(self._sigma_max * n, self._sigma_min * n, steps) / n
        sigmas32 = torch.from_numpy(self.shift * sigmas / (1 + (self.shift - 1) * sigmas)).float()
        dts = torch.cat([sigmas32[1:], sigmas32.new_zeros(1)]) - sigmas32
        return EulerTrajectory((sigmas32 * n).tolist(), dts.tolist())


@dataclass(frozen=True)
class _Update:
    """A UniP/UniC update: ratio * x - c * m0 - g * (sum_k rhos[k] * (m_k - m0) / rks[k] [+ rhos[-1] * (m_t - m0)])."""

    ratio: float
    c: float
    g: float
    rks: tuple[float, ...] = ()
    rhos: tuple[float, ...] = ()

    def apply(
        self, x: torch.Tensor, m0: torch.Tensor, history: list[torch.Tensor], m_t: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The updated sample; ``history`` holds the older x0 predictions (newest first), ``m_t`` is the corrector's."""
        terms = [rho * ((m - m0) / rk) for rho, m, rk in zip(self.rhos, history, self.rks)]
        if m_t is not None:
            terms.append(self.rhos[-1] * (m_t - m0))
        out = self.ratio * x - self.c * m0
        # g is infinite for bh1 onto sigma 0; diffusers then computes g * 0 = NaN where the exact value is m0.
        return out - self.g * sum(terms[1:], terms[0]) if terms else out


def _bh_update(sigmas: torch.Tensor, s: int, order: int, bh1: bool, corrector: bool) -> _Update:
    """Coefficients of the move sigmas[s] -> sigmas[s + 1] from ``order`` outputs, as diffusers computes them."""
    if sigmas[s + 1] == sigmas[s]:  # final_sigmas_type "sigma_min": the last move has zero length
        return _Update(1.0, 0.0, 0.0)

    def lam(i: int) -> torch.Tensor:
        return torch.log(1 - sigmas[i]) - torch.log(sigmas[i])

    h = lam(s + 1) - lam(s)
    rks = [(lam(s - k) - lam(s)) / h for k in range(1, order)]
    hh = -h
    h_phi_1 = torch.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    b_h = hh if bh1 else torch.expm1(hh)
    powers, b, factorial = torch.stack([*rks, torch.ones(())]), [], 1
    for i in range(1, order + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    r = torch.stack([powers ** (i - 1) for i in range(1, order + 1)])
    size = order if corrector else order - 1
    if (corrector and order == 1) or (not corrector and order == 2):  # diffusers' closed forms
        rhos = torch.full((1,), 0.5)
    else:
        rhos = torch.linalg.solve(r[:size, :size], torch.stack(b)[:size]) if size else torch.zeros(0)
    alpha_t = 1 - sigmas[s + 1]
    ratio, c, g = (float(v) for v in (sigmas[s + 1] / sigmas[s], alpha_t * h_phi_1, alpha_t * b_h))
    return _Update(ratio, c, g, tuple(float(v) for v in rks), tuple(rhos.tolist()))


@dataclass
class UniPCTrajectory:
    """Per-request UniPC state: the x0 predictions kept for the multistep updates and the last predictor input."""

    timesteps: list[float]
    sigmas: list[float]
    predictors: list[_Update]
    correctors: list[_Update | None]
    solver_order: int
    _outputs: list[torch.Tensor] = field(default_factory=list, init=False, repr=False)
    _last: torch.Tensor | None = field(default=None, init=False, repr=False)
    _next: int = field(default=0, init=False)

    def step(self, index: int, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """UniC-correct x_i with the new output, then UniP-predict x_{i+1}; steps must come in order."""
        if index != self._next:
            raise ValueError(f"UniPC steps run in order: expected step {self._next}, got {index}")
        sample = sample.float()
        m_t = sample - self.sigmas[index] * model_output.float()  # flow_prediction -> x0 prediction
        corrector = self.correctors[index]
        if corrector is not None and self._last is not None:
            sample = corrector.apply(self._last, self._outputs[0], self._outputs[1:], m_t)
        self._outputs = [m_t, *self._outputs][: self.solver_order]
        self._last, self._next = sample, index + 1
        return self.predictors[index].apply(sample, m_t, self._outputs[1:])


class FlowUniPC:
    """UniPC (B(h) variants, x0 form) on flow sigmas, configured like diffusers' ``UniPCMultistepScheduler``."""

    name = "unipc"

    def __init__(self, config: dict[str, Any]) -> None:
        _refuse_unsupported(config, "FlowUniPC", default_prediction="epsilon")
        cfg: dict[str, Any] = {
            "num_train_timesteps": 1000,
            "solver_order": 2,
            "solver_type": "bh2",
            "predict_x0": True,
            "lower_order_final": True,
            "disable_corrector": [],
            "use_flow_sigmas": False,
            "flow_shift": 1.0,
            "final_sigmas_type": "zero",
        }
        cfg.update({k: v for k, v in config.items() if k in cfg})
        for key in ("use_flow_sigmas", "predict_x0"):
            if not cfg[key]:
                raise NotImplementedError(f"FlowUniPC: {key}={cfg[key]!r} is not supported")
        if cfg["solver_type"] not in ("bh1", "bh2"):
            raise NotImplementedError(f"FlowUniPC: solver_type={cfg['solver_type']!r} is not supported (bh1, bh2)")
        if cfg["solver_order"] not in (1, 2, 3):
            raise NotImplementedError(f"FlowUniPC: solver_order={cfg['solver_order']!r} is not supported (1..3)")
        if cfg["final_sigmas_type"] not in ("zero", "sigma_min"):
            raise ValueError(f"final_sigmas_type must be 'zero' or 'sigma_min', got {cfg['final_sigmas_type']!r}")
        if not cfg["lower_order_final"] and cfg["final_sigmas_type"] == "zero" and cfg["solver_order"] > 1:
            raise NotImplementedError(
                "FlowUniPC: lower_order_final=False with final_sigmas_type='zero' is not supported: a multistep "
                "update onto sigma 0 divides by an infinite log-SNR step (diffusers returns inf/NaN)"
            )
        self.config = cfg

    def trajectory(self, steps: int) -> UniPCTrajectory:
        """The schedule of ``set_timesteps(steps)``; ``timesteps`` are diffusers' int64 values (truncated)."""
        cfg, n = self.config, int(self.config["num_train_timesteps"])
        _check_steps(steps, n)
        shift = cfg["flow_shift"]
        sigmas = np.linspace(1, 1 / n, steps + 1)[:-1]
        sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
        if abs(sigmas[0] - 1) < 1e-6:  # keeps log(alpha) finite, as diffusers does
            sigmas[0] -= 1e-6
        last = sigmas[-1] if cfg["final_sigmas_type"] == "sigma_min" else 0.0
        sigmas32 = torch.from_numpy(np.append(sigmas, last).astype(np.float32))
        cap, bh1 = cfg["solver_order"], cfg["solver_type"] == "bh1"
        orders = [min(cap, i + 1, steps - i if cfg["lower_order_final"] else cap) for i in range(steps)]
        correctors: list[_Update | None] = [None]
        for i in range(1, steps):
            enabled = i - 1 not in cfg["disable_corrector"]
            correctors.append(_bh_update(sigmas32, i - 1, orders[i - 1], bh1, corrector=True) if enabled else None)
        return UniPCTrajectory(
            timesteps=[float(int(t)) for t in sigmas * n],
            sigmas=sigmas32.tolist()[:-1],
            predictors=[_bh_update(sigmas32, i, orders[i], bh1, corrector=False) for i in range(steps)],
            correctors=correctors,
            solver_order=cap,
        )
