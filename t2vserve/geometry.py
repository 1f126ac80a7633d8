"""A served model's geometry (``ModelGeometry``: what its diffusers configs imply for serving, written to the
repository as ``GEOMETRY_FILE``) and the packed cross-attention K/V layout (``KVLayout``).

Split from ``spec`` (request parameters, presets, tensor names), whose ranges, presets and tiers it reads.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .spec import (
    CFG_BATCH, DEFAULT_TIER, DISTILLED_TRACK, FPS_RANGE, GUIDANCE_RANGE, PRESETS, QUALITY_TIERS, QUANTIZED_TRACKS,
    SCHEDULER_INSTANCES, SEED_RANGE, STEP_CACHE_RANGE, STEPS_RANGE, TRACK_DEFAULT_PARAMETERS, Preset, Range,
)


@dataclass(frozen=True)
class KVLayer:
    """One cross-attention layer of the denoiser: where its K and V sit in the packed tensor."""

    name: str  # module path of the attention layer, e.g. "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    heads: int
    head_dim: int
    offset: int  # K occupies [offset, offset + inner), V occupies [offset + inner, offset + 2 * inner)

    @property
    def inner_dim(self) -> int:
        return self.heads * self.head_dim


@dataclass(frozen=True)
class KVLayout:
    """Packed K/V: ``KV[b, s, :]`` concatenates ``K_l, V_l`` for every cross-attention layer l, in order."""

    layers: tuple[KVLayer, ...]

    @classmethod
    def from_layers(cls, layers: list[tuple[str, int, int]]) -> "KVLayout":
        packed, offset = [], 0
        for name, heads, head_dim in layers:
            packed.append(KVLayer(name, heads, head_dim, offset))
            offset += 2 * heads * head_dim
        return cls(tuple(packed))

    @property
    def width(self) -> int:
        return sum(2 * layer.inner_dim for layer in self.layers)

    def layer(self, name: str) -> KVLayer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)


@dataclass(frozen=True)
class ModelGeometry:
    """What a served model implies for serving, read from its diffusers configs at export time.

    ``tracks`` maps each PRECISION value to the denoiser entries of that track, one per expert
    (Wan2.2 A14B: high-noise expert first); the scheduler switches from the first to the second
    expert at ``boundary_ratio * num_train_timesteps``, as diffusers' ``WanPipeline`` does.
    """

    family: str
    preset: str
    latent_channels: int
    vae_scale_factor: int  # spatial
    denoiser_downsample_factor: int  # UNet: 2 ** downsamplers; DiT: spatial patch size
    vae_scaling_factor: float
    text_max_length: int
    text_hidden_size: int
    vocab_size: int
    kv_layout: KVLayout
    tracks: dict[str, list[str]]
    default_precision: str
    samplers: list[str]
    vae_temporal_factor: int = 1  # latent frames = (frames - 1) // factor + 1 when > 1
    boundary_ratio: float | None = None
    scheduler_config: dict[str, Any] = field(default_factory=dict)
    #: PRECISION track -> its own request defaults (a distilled student's STEPS and GUIDANCE_SCALE), over the preset's
    track_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)

    unserved_tracks: list[str] = field(default_factory=list)  # tracks of the model this server's runner cannot run (``served``)

    def __post_init__(self) -> None:
        ranges = self.ranges()
        for track, values in self.track_defaults.items():
            for name, value in values.items():
                if track not in self.tracks or name not in TRACK_DEFAULT_PARAMETERS or not ranges[name].contains(value):
                    raise ValueError(f"track defaults {track}.{name} = {value!r}: allowed {', '.join(TRACK_DEFAULT_PARAMETERS)} "
                                     f"of a track of the model, in their ranges")

    def served(self, tracks: list[str]) -> "ModelGeometry":
        """The geometry as a server that runs only ``tracks`` sees it (runner without kernels for the rest).

        The default precision falls back to the first served full-precision track when the model's
        default is not served (unet3d under the torch runner: int8 -> fp16).
        """
        kept = {track: entries for track, entries in self.tracks.items() if track in tracks}
        if not kept:
            raise ValueError(f"none of the tracks {tracks} is a track of this model ({', '.join(self.tracks)})")
        default = self.default_precision
        if default not in kept:
            default = next((t for t in kept if t not in QUANTIZED_TRACKS), next(iter(kept)))
        track_defaults = {t: values for t, values in self.track_defaults.items() if t in kept}
        return replace(self, tracks=kept, default_precision=default, track_defaults=track_defaults,
                       unserved_tracks=[t for t in self.tracks if t not in kept])

    @property
    def pixel_multiple(self) -> int:
        """Height and width must be multiples of this (VAE scale times denoiser downsampling)."""
        return self.vae_scale_factor * self.denoiser_downsample_factor

    @property
    def presets(self) -> Preset:
        return PRESETS[self.preset]

    @property
    def experts(self) -> int:
        return len(next(iter(self.tracks.values())))

    @property
    def boundary_timestep(self) -> float | None:
        """Timesteps at or above this go to the first expert, below it to the second."""
        if self.boundary_ratio is None or self.experts < 2:
            return None
        return self.boundary_ratio * int(self.scheduler_config.get("num_train_timesteps", 1000))

    def frames_range(self) -> Range:
        low, high = self.presets.frames_range
        factor = self.vae_temporal_factor
        return Range(low, high, multiple_of=factor, remainder=1) if factor > 1 else Range(low, high)

    def ranges(self) -> dict[str, Range]:
        """Allowed range of every numeric request parameter for this model."""
        preset = self.presets
        m = self.pixel_multiple
        return {
            "STEPS": STEPS_RANGE,
            "GUIDANCE_SCALE": GUIDANCE_RANGE,
            "SEED": SEED_RANGE,
            "HEIGHT": Range(*preset.height_range, multiple_of=m),
            "WIDTH": Range(*preset.width_range, multiple_of=m),
            "NUM_FRAMES": self.frames_range(),
            "FPS": FPS_RANGE,
            "STEP_CACHE": STEP_CACHE_RANGE,
        }

    def defaults(self, tier: str = DEFAULT_TIER, precision: str | None = None) -> dict[str, Any]:
        """Default of every numeric parameter PRECISION and STEP_CACHE under quality tier ``tier`` (request PRESET) on track
        ``precision`` (None: the tier's). A track with defaults of its own (``track_defaults``: a distilled student,
        trained for its step count and guidance) keeps them under every tier."""
        preset, chosen, ranges = self.presets, QUALITY_TIERS[tier], self.ranges()
        track = precision or self.tier_precision(chosen.precision)
        # one scale for both sides keeps the aspect ratio; raised where a side would fall below its range
        height, width = ranges["HEIGHT"], ranges["WIDTH"]
        scale = max(chosen.resolution_scale, height.grid_values()[0] / preset.height, width.grid_values()[0] / preset.width)
        return {
            "STEPS": STEPS_RANGE.nearest(preset.steps * chosen.steps_scale),
            "GUIDANCE_SCALE": preset.guidance_scale,
            **self.track_defaults.get(track, {}),
            "HEIGHT": height.nearest(preset.height * scale),
            "WIDTH": width.nearest(preset.width * scale),
            "NUM_FRAMES": ranges["NUM_FRAMES"].nearest(preset.num_frames * chosen.frames_scale),
            "FPS": preset.fps,
            "PRECISION": track,
            "STEP_CACHE": chosen.step_cache_threshold,
        }

    def tier_precision(self, choice: str) -> str:
        """The PRECISION track a tier's ``precision`` choice means for this model (its default where it has no such
        track); never a track with defaults of its own (a distilled student is chosen by name)."""
        if choice == "default":
            return self.default_precision
        if choice not in ("quantized", "full"):
            raise ValueError(f"unknown tier precision {choice!r}; known: quantized, default, full")
        tier_tracks = [track for track in self.tracks if track != DISTILLED_TRACK and track not in self.track_defaults]
        if choice == "quantized":  # in QUANTIZED_TRACKS' order of preference (the geometry file does not keep the declaration order)
            return next((track for track in QUANTIZED_TRACKS if track in tier_tracks), self.default_precision)
        return next((track for track in tier_tracks if track not in QUANTIZED_TRACKS), self.default_precision)

    def latent_frames(self, num_frames: int) -> int:
        factor = self.vae_temporal_factor
        return (num_frames - 1) // factor + 1 if factor > 1 else num_frames

    def latent_shape(self, height: int, width: int, num_frames: int, batch: int = 1) -> tuple[int, ...]:
        s = self.vae_scale_factor
        return (batch, self.latent_channels, self.latent_frames(num_frames), height // s, width // s)

    def transfer_pool_bytes(self, height: int, width: int, num_frames: int) -> int:
        """GPU bytes the Python-backend entries hand each other per server (Triton's CUDA memory pool,
        ``--cuda-memory-pool-byte-size``): each of SCHEDULER_INSTANCES requests' packed K/V (fp32, a CFG pair), its
        sample and noise prediction and its uint8 frames, twice (a tensor in flight while the previous one is
        released), at least 1 GiB. Where the pool is too small Triton moves the tensors through host memory
        (Wan2.2-5B's K/V is 755 MB a request: 2 GiB ran out at 8 concurrent requests)."""
        kv = CFG_BATCH * self.text_max_length * self.kv_layout.width * 4
        latents = 2 * 4 * math.prod(self.latent_shape(height, width, num_frames, batch=CFG_BATCH))
        frames = num_frames * height * width * 3
        return max(2**30, 2 * SCHEDULER_INSTANCES * (kv + latents + frames))

    # -- serialisation: the repository carries this as t2v_model.json next to the entries that need it
    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelGeometry":
        data = dict(data)
        data["kv_layout"] = KVLayout(tuple(KVLayer(**layer) for layer in data["kv_layout"]["layers"]))
        return cls(**data)

    @classmethod
    def load(cls, path: Path) -> "ModelGeometry":
        return cls.from_dict(json.loads(Path(path).read_text()))


GEOMETRY_FILE = "t2v_model.json"
