"""The one source of truth: request parameters, presets, tensor names, model geometry and the K/V layout.

Export, repository configs, the Triton models, the client and the tests read these definitions;
nothing else restates a range, a default or a tensor name.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------------------------------
# Tensor names between the repository entries (inputs/outputs of the engine slots)
# --------------------------------------------------------------------------------------------------
INPUT_IDS = "INPUT_IDS"  # int64 [2, seq]: negative (unconditional) prompt first, then prompt
TEXT_EMBEDS = "TEXT_EMBEDS"  # fp32 [2, seq, hidden]
KV = "KV"  # fp32 [batch, seq, kv_width]: every cross-attention layer's K and V, packed (KVLayout)
SAMPLE = "SAMPLE"  # fp32 [batch, channels, frames, h, w]: noisy latents
TIMESTEP = "TIMESTEP"  # fp32 [batch]: one timestep per sample
NOISE_PRED = "NOISE_PRED"  # fp32 [batch, channels, frames, h, w]
LATENTS = "LATENTS"  # fp32 [frames, channels, h, w]: denoised latents, frames as the VAE batch
FRAMES = "FRAMES"  # fp32 [frames, 3, H, W] in [-1, 1]: decoded frames
VIDEO = "VIDEO"  # uint8 [frames, H, W, 3]
MP4 = "MP4"  # bytes [1]: H.264 MP4 file

#: Engine slots: the repository entries that are TensorRT plans on GPU hosts and runner-backed elsewhere.
ENGINE_SLOTS = ("text_encoder", "kv_projector", "unet", "unet_int8", "vae_decoder")

#: UNet tracks a request chooses with PRECISION -> the repository entry the scheduler calls.
#: "fp16" is the full-precision UNet: an FP16 TensorRT engine on GPU hosts, FP32 under ONNX Runtime.
UNET_TRACKS = {"int8": "unet_int8", "fp16": "unet"}
DEFAULT_PRECISION = "int8"

#: Largest batch the UNet entries accept: Triton's dynamic batcher joins the CFG pairs (batch 2) of
#: concurrent requests, so this is 4 requests' worth. Each request's pair stays together.
UNET_MAX_BATCH = 8
#: Scheduler (DDIM loop) instances: how many requests can be denoising at once, feeding the batcher.
SCHEDULER_INSTANCES = 4

#: Prompts longer than this many characters are refused before tokenizing.
PROMPT_MAX_CHARS = 2000


# --------------------------------------------------------------------------------------------------
# Request parameters of the ensemble ``t2v``
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Range:
    """Inclusive numeric range, optionally with a step (values must be multiples of it)."""

    low: float
    high: float
    multiple_of: int = 1

    def describe(self) -> str:
        text = f"[{_fmt(self.low)}, {_fmt(self.high)}]"
        if self.multiple_of > 1:
            text += f", a multiple of {self.multiple_of}"
        return text

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high and (self.multiple_of <= 1 or int(value) % self.multiple_of == 0)


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


@dataclass(frozen=True)
class Preset:
    """Default geometry and sampling settings of a served model, plus the ranges it accepts."""

    name: str
    height: int
    width: int
    num_frames: int
    fps: int
    steps: int
    guidance_scale: float
    height_range: tuple[int, int]
    width_range: tuple[int, int]
    frames_range: tuple[int, int]


#: Presets by name. ``tiny`` is the project's own demo/test model; ``modelscope`` matches
#: ModelScope text-to-video-ms / ZeroScope v2 576w weights.
PRESETS: dict[str, Preset] = {
    "tiny": Preset("tiny", 64, 64, 8, 8, 10, 7.5, (32, 128), (32, 128), (1, 16)),
    "modelscope": Preset("modelscope", 320, 576, 24, 8, 25, 9.0, (256, 576), (256, 1024), (8, 32)),
}

STEPS_RANGE = Range(1, 100)
GUIDANCE_RANGE = Range(1.0, 30.0)
SEED_RANGE = Range(0, 2**63 - 1)
FPS_RANGE = Range(1, 60)


@dataclass(frozen=True)
class Parameter:
    """One input of the ensemble: Triton dtype, whether optional, and how to describe its range."""

    name: str
    triton_dtype: str
    optional: bool
    doc: str


PARAMETERS: tuple[Parameter, ...] = (
    Parameter("PROMPT", "TYPE_STRING", False, "UTF-8 text, 1..PROMPT_MAX_CHARS characters, at most the text encoder's tokens"),
    Parameter("NEGATIVE_PROMPT", "TYPE_STRING", True, "UTF-8 text steering away from content; default empty"),
    Parameter("STEPS", "TYPE_INT32", True, "DDIM steps"),
    Parameter("GUIDANCE_SCALE", "TYPE_FP32", True, "classifier-free guidance scale"),
    Parameter("SEED", "TYPE_INT64", True, "noise seed; default: a random seed, returned in SEED"),
    Parameter("HEIGHT", "TYPE_INT32", True, "frame height in pixels"),
    Parameter("WIDTH", "TYPE_INT32", True, "frame width in pixels"),
    Parameter("NUM_FRAMES", "TYPE_INT32", True, "number of frames"),
    Parameter("FPS", "TYPE_INT32", True, "frames per second of the MP4"),
    Parameter("PRECISION", "TYPE_STRING", True, "UNet track: int8 (default) or fp16"),
)

#: Validated, defaulted parameters as they leave ``preprocess`` (name -> Triton dtype).
RESOLVED_PARAMETERS: dict[str, str] = {
    "STEPS": "TYPE_INT32",
    "GUIDANCE_SCALE": "TYPE_FP32",
    "SEED": "TYPE_INT64",
    "HEIGHT": "TYPE_INT32",
    "WIDTH": "TYPE_INT32",
    "NUM_FRAMES": "TYPE_INT32",
    "FPS": "TYPE_INT32",
    "PRECISION": "TYPE_STRING",
}


# --------------------------------------------------------------------------------------------------
# Model geometry and the packed K/V layout
# --------------------------------------------------------------------------------------------------
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
    """Shapes a served model implies, read from its diffusers configs at export time."""

    family: str
    preset: str
    latent_channels: int
    vae_scale_factor: int
    unet_downsample_factor: int  # 2 ** number of UNet downsamplers
    vae_scaling_factor: float
    text_max_length: int
    text_hidden_size: int
    kv_layout: KVLayout
    scheduler_config: dict[str, Any] = field(default_factory=dict)

    @property
    def pixel_multiple(self) -> int:
        """Height and width must be multiples of this (VAE scale times UNet downsampling)."""
        return self.vae_scale_factor * self.unet_downsample_factor

    @property
    def presets(self) -> Preset:
        return PRESETS[self.preset]

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
            "NUM_FRAMES": Range(*preset.frames_range),
            "FPS": FPS_RANGE,
        }

    def defaults(self) -> dict[str, float]:
        preset = self.presets
        return {
            "STEPS": preset.steps,
            "GUIDANCE_SCALE": preset.guidance_scale,
            "HEIGHT": preset.height,
            "WIDTH": preset.width,
            "NUM_FRAMES": preset.num_frames,
            "FPS": preset.fps,
        }

    def latent_shape(self, height: int, width: int, num_frames: int, batch: int = 1) -> tuple[int, ...]:
        s = self.vae_scale_factor
        return (batch, self.latent_channels, num_frames, height // s, width // s)

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

#: Config data types of the ensemble's parameters -> numpy dtype and the wire name tritonclient uses.
NUMPY_DTYPES: dict[str, Any] = {"TYPE_STRING": object, "TYPE_INT32": "int32", "TYPE_INT64": "int64", "TYPE_FP32": "float32"}
WIRE_DTYPES = {"TYPE_STRING": "BYTES", "TYPE_INT32": "INT32", "TYPE_INT64": "INT64", "TYPE_FP32": "FP32"}
