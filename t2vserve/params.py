"""Validate and default the request parameters of the ensemble (used by ``preprocess``).

Every failure is a ``ParameterError`` naming the parameter and its allowed range; the Triton model
turns it into an INVALID_ARG response.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .spec import DEFAULT_TIER, MAX_TIME_LIMIT_S, PARAMETERS, POSTPROCESS_PARAMETERS, PREVIEW_EVERY_RANGE, PROMPT_MAX_CHARS, QUALITY_TIERS, Range, time_limit_range
from .geometry import ModelGeometry


class ParameterError(ValueError):
    """A request parameter is missing, malformed or out of range."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name


@dataclass(frozen=True)
class ResolvedRequest:
    """A validated request with defaults filled in."""

    prompt: str
    negative_prompt: str
    steps: int
    guidance_scale: float
    seed: int
    height: int
    width: int
    num_frames: int
    fps: int
    precision: str
    sampler: str
    time_limit_s: float = MAX_TIME_LIMIT_S
    step_cache: float = 0.0  # the step cache's threshold (0: off)
    explicit_seed: bool = False  # SEED came with the request (not drawn by the server): the result is reproducible
    return_frames: bool = True  # VIDEO carries the frames (RETURN_FRAMES)

    def response_key(self) -> str:
        """The response cache's key: a digest of everything the denoised latents depend on (texts, steps,
        guidance, seed, size, track, sampler, step cache; not TIME_LIMIT_S or postprocess's FPS and RETURN_FRAMES);
        empty when the server drew the seed, since then a repeated request asks for a new clip."""
        if not self.explicit_seed:
            return ""
        fields = {k: v for k, v in self.resolved().items() if k not in ("TIME_LIMIT_S", *POSTPROCESS_PARAMETERS)}
        payload = json.dumps({"prompt": self.prompt, "negative_prompt": self.negative_prompt, **fields}, sort_keys=True)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def resolved(self) -> dict[str, Any]:
        """Resolved parameters by ensemble name (see spec.RESOLVED_PARAMETERS)."""
        return {
            "STEPS": self.steps,
            "GUIDANCE_SCALE": self.guidance_scale,
            "SEED": self.seed,
            "HEIGHT": self.height,
            "WIDTH": self.width,
            "NUM_FRAMES": self.num_frames,
            "FPS": self.fps,
            "PRECISION": self.precision,
            "SAMPLER": self.sampler,
            "TIME_LIMIT_S": self.time_limit_s,
            "STEP_CACHE": self.step_cache,
            "RETURN_FRAMES": self.return_frames,
        }


def read_parameter_error(message: str) -> ParameterError | None:
    """The ParameterError whose message is ``message`` (``NAME: ...`` for a request parameter), else None."""
    name, separator, rest = message.partition(": ")
    return ParameterError(name, rest) if separator and name in {p.name for p in PARAMETERS} else None


def _single(name: str, value: np.ndarray) -> Any:
    if value.size != 1:
        raise ParameterError(name, f"expected exactly one value, got shape {list(value.shape)}")
    return value.reshape(-1)[0]


def _text(name: str, value: np.ndarray | None, required: bool) -> str:
    if value is None:
        if required:
            raise ParameterError(name, f"is required; allowed 1..{PROMPT_MAX_CHARS} characters")
        return ""
    raw = _single(name, value)
    if isinstance(raw, str):
        text = raw
    else:
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ParameterError(name, f"must be valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    if required and not text.strip():
        raise ParameterError(name, f"must not be empty; allowed 1..{PROMPT_MAX_CHARS} characters")
    if len(text) > PROMPT_MAX_CHARS:
        raise ParameterError(name, f"is {len(text)} characters; allowed at most {PROMPT_MAX_CHARS}")
    return text


def _flag(name: str, value: np.ndarray | None, default: bool) -> bool:
    if value is None:
        return default
    raw = _single(name, value)
    if not isinstance(raw, (bool, np.bool_)):
        raise ParameterError(name, f"{raw!r} is not a BOOL; allowed true or false")
    return bool(raw)


def _choice(name: str, value: np.ndarray | None, default: str, allowed: tuple[str, ...]) -> str:
    if value is None:
        return default
    text = _text(name, value, required=False)
    if text not in allowed:
        raise ParameterError(name, f"{text!r} is not allowed; allowed: {', '.join(allowed)}")
    return text


def _number(name: str, value: np.ndarray | None, default: Any, allowed: Range, cast: Callable[[Any], Any]) -> Any:
    if value is None:
        return default
    raw = _single(name, value)
    number = cast(raw)
    if not np.isfinite(number) or not allowed.contains(number):
        raise ParameterError(name, f"{number!r} is out of range; allowed {allowed.describe()}")
    return number


def resolve(inputs: dict[str, np.ndarray | None], geometry: ModelGeometry, max_time_limit_s: float = MAX_TIME_LIMIT_S) -> ResolvedRequest:
    """Validate raw input arrays (missing optional inputs are None) against the model's ranges.

    PRESET (a quality tier, spec.QUALITY_TIERS) and PRECISION (a track with defaults of its own: a distilled
    student's steps and guidance) pick the defaults; explicit parameters override them.
    ``max_time_limit_s``: the server's largest TIME_LIMIT_S, also its default.
    """
    unknown = set(inputs) - {p.name for p in PARAMETERS}
    if unknown:
        raise ParameterError(sorted(unknown)[0], "is not a parameter of this model")
    tier = _choice("PRESET", inputs.get("PRESET"), DEFAULT_TIER, tuple(QUALITY_TIERS))
    precision = _precision(inputs.get("PRECISION"), geometry.defaults(tier)["PRECISION"], geometry)
    ranges, defaults = geometry.ranges(), geometry.defaults(tier, precision)
    seed, negative = inputs.get("SEED"), inputs.get("NEGATIVE_PROMPT")
    return ResolvedRequest(
        prompt=_text("PROMPT", inputs.get("PROMPT"), required=True),
        negative_prompt=_text("NEGATIVE_PROMPT", negative, required=False) if negative is not None else geometry.presets.negative_prompt,
        steps=_number("STEPS", inputs.get("STEPS"), defaults["STEPS"], ranges["STEPS"], int),
        guidance_scale=_number("GUIDANCE_SCALE", inputs.get("GUIDANCE_SCALE"), defaults["GUIDANCE_SCALE"], ranges["GUIDANCE_SCALE"], float),
        seed=_number("SEED", seed, None, ranges["SEED"], int) if seed is not None else secrets.randbelow(2**63),
        height=_number("HEIGHT", inputs.get("HEIGHT"), defaults["HEIGHT"], ranges["HEIGHT"], int),
        width=_number("WIDTH", inputs.get("WIDTH"), defaults["WIDTH"], ranges["WIDTH"], int),
        num_frames=_number("NUM_FRAMES", inputs.get("NUM_FRAMES"), defaults["NUM_FRAMES"], ranges["NUM_FRAMES"], int),
        fps=_number("FPS", inputs.get("FPS"), defaults["FPS"], ranges["FPS"], int),
        precision=precision,
        sampler=_choice("SAMPLER", inputs.get("SAMPLER"), geometry.presets.sampler, tuple(geometry.samplers)),
        time_limit_s=_number("TIME_LIMIT_S", inputs.get("TIME_LIMIT_S"), max_time_limit_s, time_limit_range(max_time_limit_s), float),
        step_cache=_number("STEP_CACHE", inputs.get("STEP_CACHE"), defaults["STEP_CACHE"], ranges["STEP_CACHE"], float),
        explicit_seed=seed is not None,
        return_frames=_flag("RETURN_FRAMES", inputs.get("RETURN_FRAMES"), True),
    )


def _precision(value: np.ndarray | None, default: str, geometry: ModelGeometry) -> str:
    """PRECISION: one of the tracks this server runs; a track of the model that its runner cannot run says so."""
    if value is not None and _text("PRECISION", value, required=False) in geometry.unserved_tracks:
        raise ParameterError("PRECISION", f"{_text('PRECISION', value, required=False)!r} is a track of this model that this "
                             f"server's runner has no kernels for; allowed: {', '.join(geometry.tracks)}")
    return _choice("PRECISION", value, default, tuple(geometry.tracks))


def resolve_preview_every(value: np.ndarray | None) -> int:
    """PREVIEW_EVERY of a streamed request (0: no previews)."""
    return int(_number("PREVIEW_EVERY", value, 0, PREVIEW_EVERY_RANGE, int))


def tokenize_pair(
    tokenizer: Any, prompt: str, negative_prompt: str, max_length: int, clean: Callable[[str], str] = lambda text: text
) -> np.ndarray:
    """INPUT_IDS [2, max_length]: the negative prompt first, then the prompt (diffusers' CFG order).

    ``clean`` is the family's text cleaning (what its reference pipeline applies). A prompt that does
    not fit the text encoder is refused rather than silently truncated.
    """
    rows, special = [], tokenizer.num_special_tokens_to_add()
    for name, text in (("NEGATIVE_PROMPT", negative_prompt), ("PROMPT", prompt)):
        ids = tokenizer(clean(text), padding="max_length", max_length=max_length, truncation=False).input_ids
        if len(ids) > max_length:
            raise ParameterError(
                name, f"is {len(ids) - special} tokens long; allowed at most {max_length - special} tokens for this text encoder"
            )
        rows.append(ids)
    return np.asarray(rows, dtype=np.int64)
