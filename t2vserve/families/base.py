"""What a model family declares: its engine slots, once each, in the style of TensorRT demo/Diffusion.

A ``Slot`` answers every question about one engine slot: its torch module, input/output names,
dtypes and dimensions (symbolic axes resolved per model and preset), its TensorRT precision and
Triton batching. Repository configs, ONNX export, engine profiles, runners and the in-process
pipeline all read ``Family.slots``; nothing else restates a slot's interface.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Mapping

import torch
from torch import nn

from ..geometry import ModelGeometry
from ..spec import (
    CFG_BATCH,
    DENOISER,
    DENOISER_MAX_BATCH,
    FRAMES,
    INPUT_IDS,
    KV,
    LATENTS,
    NOISE_PRED,
    PRESETS,
    SAMPLE,
    TEXT_EMBEDS,
    TIMESTEP,
    Preset,
)
from ..video import uint8_frames

#: Axes that vary per request (ONNX dynamic axes, TensorRT profile ranges); every other symbolic
#: axis is a constant of the model (``Family.constants``).
DYNAMIC_AXES = ("batch", "frames", "latent_frames", "latent_height", "latent_width", "height", "width")

#: Triton config dtype -> torch dtype of the example inputs.
TORCH_DTYPES = {"TYPE_FP32": torch.float32, "TYPE_INT64": torch.int64}


@dataclass(frozen=True)
class Extent:
    """One dynamic dimension: smallest, most frequent and largest value."""

    min: int
    opt: int
    max: int


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a slot: name, Triton dtype, dims (ints or axis names)."""

    name: str
    dtype: str
    dims: tuple[int | str, ...]

    def triton_dims(self) -> tuple[int, ...]:
        """Config dims: -1 wherever the dimension is symbolic (the configs do not depend on the model)."""
        return tuple(d if isinstance(d, int) else -1 for d in self.dims)

    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.dims) if isinstance(d, str) and d in DYNAMIC_AXES}

    def shape(self, values: Mapping[str, int]) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else int(values[d]) for d in self.dims)


#: The ensemble's tensor contract between the slots, shared by every family (a family may declare others).
TEXT_IDS = TensorSpec(INPUT_IDS, "TYPE_INT64", ("batch", "seq"))
TEXT_OUT = TensorSpec(TEXT_EMBEDS, "TYPE_FP32", ("batch", "seq", "text_hidden"))
PACKED_KV = TensorSpec(KV, "TYPE_FP32", ("batch", "seq", "kv_width"))
LATENT_DIMS = ("batch", "channels", "latent_frames", "latent_height", "latent_width")
DENOISER_IO = (
    (TensorSpec(SAMPLE, "TYPE_FP32", LATENT_DIMS), TensorSpec(TIMESTEP, "TYPE_FP32", ("batch",)), PACKED_KV),
    (TensorSpec(NOISE_PRED, "TYPE_FP32", LATENT_DIMS),),
)
#: The decoder slot emits the clip's uint8 frames (``Uint8Frames``): converted where it decodes, a quarter of fp32's bytes.
DECODER_IO = (
    (TensorSpec(LATENTS, "TYPE_FP32", (1, "channels", "latent_frames", "latent_height", "latent_width")),),
    (TensorSpec(FRAMES, "TYPE_UINT8", ("frames", "height", "width", 3)),),
)


class Uint8Frames(nn.Module):
    """The module of a ``vae_decoder`` slot: a family's VAE decoder (latents -> frames [F, 3, H, W] in [-1, 1]) followed
    by ``video.uint8_frames`` (-> uint8 [F, H, W, 3]), so the ONNX/TensorRT graph and the torch runner both emit uint8."""

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder  # the float frames: preview fitting, the export check (``video.rounding_excess``)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return uint8_frames(self.decoder(latents))


@dataclass(frozen=True)
class Slot:
    """One engine slot: a repository entry with a TensorRT plan on GPU hosts, a runner elsewhere."""

    name: str  # repository entry, e.g. "text_encoder", "unet_int8", "transformer_2"
    role: str  # spec.TEXT_ENCODER / KV_PROJECTOR / DENOISER / VAE_DECODER
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    module: Callable[[Any], nn.Module]  # components -> the module export and the torch runner run
    precision: str = "fp16"  # TensorRT plan precision: fp16 | bf16 | fp32 | int8 (Q/DQ, FP16 elsewhere) | int8+bf16 | fp8 (E4M3 Q/DQ)
    exporter: str = "torchscript"  # torchscript | dynamo (onnxscript; TensorRT-10.5-parseable opset 18)
    quantized_from: str | None = None  # a quantized slot's module is this slot's, quantized by ``recipe``
    recipe: str | None = None  # data/recipes/<recipe>.json (ModelOpt precision recipe) of a quantized slot
    export_module: Callable[[Any, ModelGeometry], nn.Module] | None = None  # what ONNX export runs, when it differs
    # an optional component directory of the model (e.g. "unet_distilled") the module reads: the slot, and the
    # track naming it, exist only where the model has it (``Family.components``, ``ModelGeometry.tracks``)
    component: str | None = None

    def onnx_module(self, components: Any, geometry: ModelGeometry) -> nn.Module:
        """The module exported to ONNX (e.g. a decoder unrolled to the preset's longest clip)."""
        return (self.export_module or (lambda c, _: self.module(c)))(components, geometry)

    @property
    def quantized_format(self) -> str | None:
        """``int8`` or ``fp8`` for a quantized slot (its Q/DQ format), None for a floating-point one."""
        return self.precision.split("+")[0] if self.quantized_from is not None else None

    @property
    def max_batch(self) -> int:
        """Triton dynamic batching across requests: denoisers only (CFG pairs kept whole)."""
        return DENOISER_MAX_BATCH if self.role == DENOISER else 0

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {t.name: axes for t in (*self.inputs, *self.outputs) if (axes := t.dynamic_axes())}

    def example_inputs(self, values: Mapping[str, int], vocab_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
        """Random inputs with the axes at ``values``: token ids below ``vocab_size``, timesteps in [0, 1000)."""
        generator = torch.Generator().manual_seed(seed)
        inputs = {}
        for spec in self.inputs:
            shape = spec.shape(values)
            if TORCH_DTYPES[spec.dtype] == torch.int64:
                inputs[spec.name] = torch.randint(0, vocab_size, shape, generator=generator)
            elif spec.name == TIMESTEP:
                inputs[spec.name] = torch.randint(0, 1000, shape, generator=generator).float()
            else:
                inputs[spec.name] = torch.randn(shape, generator=generator)
        return inputs


#: In an optional denoiser component's directory: the request defaults of its track, by parameter name
#: (a distilled student's ``{"STEPS": 4, "GUIDANCE_SCALE": 1.0}``), over the preset's.
TRACK_DEFAULTS_FILE = "track_defaults.json"


class LazyComponents:
    """A model directory's components, each loaded on first access (a runner loads only what its slot uses).

    ``present``: the optional components (``Slot.component``) the directory has, with their track defaults.
    """

    def __init__(self, loader: Callable[[str], Any], present: Mapping[str, dict[str, Any]] | None = None) -> None:
        self._loader, self._loaded = loader, {}
        self.present = dict(present or {})

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._loaded:
            self._loaded[name] = self._loader(name)
        return self._loaded[name]


def load_model(cls: Any, path: Path, dtype: torch.dtype | None) -> nn.Module:
    """A diffusers/transformers model from a ``save_pretrained`` directory; ``dtype`` None: structure only
    (configs and shapes on the meta device, no weights read: what metadata export needs)."""
    if dtype is not None:
        return cls.from_pretrained(str(path), torch_dtype=dtype).eval()
    with torch.device("meta"):
        if hasattr(cls, "load_config"):  # diffusers
            return cls.from_config(cls.load_config(str(path))).eval()
        return cls(cls.config_class.from_pretrained(str(path))).eval()  # transformers


def read_scheduler_config(model_dir: Path) -> dict[str, Any]:
    config = json.loads((Path(model_dir) / "scheduler" / "scheduler_config.json").read_text())
    return {k: v for k, v in config.items() if not k.startswith("_")}


class Family:
    """A model family: tiny demo model, component loading, geometry and the slot declarations.

    Subclasses set ``name``, ``component_names`` and implement ``build_tiny_model``,
    ``load_component``, ``geometry`` and ``slots``.
    """

    name: str = ""
    component_names: tuple[str, ...] = ()
    default_precision: str = ""
    tiny_preset: str = ""  # the preset of the family's tiny demo model
    full_size_preset: str = ""  # the preset of ``build_full_size_model`` in full-size jobs (benchmarks, Q/DQ export)
    reference_dtype: torch.dtype = torch.bfloat16  # the diffusers reference pipeline's dtype on the GPU

    def tracks(self, experts: int = 1) -> dict[str, list[str]]:
        """PRECISION value -> the denoiser entries of that track, one per expert."""
        raise NotImplementedError

    def build_tiny_model(self, out_dir: Path, seed: int = 0, **variant: Any) -> Path:
        raise NotImplementedError

    def load_component(self, model_dir: Path, name: str, dtype: torch.dtype | None) -> Any:
        """One component; models through ``load_model`` (``dtype`` None: structure only, on the meta device)."""
        raise NotImplementedError

    def geometry(self, components: Any, preset: str) -> ModelGeometry:
        raise NotImplementedError

    def slots(self, experts: int = 1) -> tuple[Slot, ...]:
        raise NotImplementedError

    def build_full_size_model(self, out_dir: Path, preset: str, dtype: torch.dtype, device: str, **variant: Any) -> Path:
        """A full-size model of ``preset`` with random weights, saved in diffusers format (benchmarks)."""
        raise NotImplementedError

    def training_variant(self) -> dict[str, Any]:
        """``build_tiny_model`` keyword arguments of a model that is going to be trained (e.g. its schedule)."""
        return {}

    def training_recipe(self) -> dict[str, Any]:
        """``TrainConfig`` fields this family trains with, over the defaults (the unet3d demo model's)."""
        return {}

    def trainer(self, components: Any, device: torch.device) -> Any:
        """The family's training adapter (VAE loss, latents, text embeddings, denoiser loss): ``t2vserve.train``."""
        raise NotImplementedError(f"the {self.name} family has no trainer")

    def encode_clips(self, components: Any, clips: torch.Tensor) -> torch.Tensor:
        """Clips [B, F, 3, H, W] in [-1, 1] -> latents [B, C, f, h, w] as the denoiser sees them (the VAE's
        posterior mode, normalised as the served decoder expects): what the preview decoder is fitted on."""
        raise NotImplementedError

    def save_denoiser(self, module: nn.Module, directory: Path) -> None:
        """Write a denoiser slot's module (a distilled student) as a diffusers component directory (``save_pretrained``)."""
        raise NotImplementedError(f"the {self.name} family cannot save a denoiser module")

    def stock_denoiser(self, pipe: Any) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
        """(sample, timestep [B], text embeddings) -> output, as the family's diffusers pipeline calls its denoiser."""
        raise NotImplementedError

    def full_size_denoiser(self, preset: str, dtype: torch.dtype, device: str) -> tuple[Callable[..., torch.Tensor], tuple[int, ...], tuple[int, ...]]:
        """The stock denoiser alone at ``preset``'s full size (random weights; diffusers only, no text encoder or VAE)
        as ``stock_denoiser`` calls it, with the shapes of one request's sample and text embeddings (``bench.probe``)."""
        raise NotImplementedError(f"the {self.name} family has no full-size denoiser probe")

    def constants(self, geometry: ModelGeometry) -> dict[str, int]:
        """Values of the model's constant symbolic axes (text length, widths, channels)."""
        return {
            "seq": geometry.text_max_length,
            "text_hidden": geometry.text_hidden_size,
            "kv_width": geometry.kv_layout.width,
            "channels": geometry.latent_channels,
        }

    def load_tokenizer(self, directory: Path) -> Any:
        """The tokenizer saved in ``directory`` (``save_pretrained`` layout)."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(directory))

    def clean_prompt(self, text: str) -> str:
        """Text cleaning the family's reference pipeline applies before tokenizing (none by default)."""
        return text

    # -- derived: shared by every family ---------------------------------------------------------
    def presets(self) -> list[str]:
        return [name for name, preset in PRESETS.items() if preset.family == self.name]

    def components(self, model_dir: Path, dtype: torch.dtype | None = torch.float32) -> LazyComponents:
        model_dir = Path(model_dir)
        missing = [n for n in self.component_names if not (model_dir / n).is_dir()]
        if missing:
            raise FileNotFoundError(f"{model_dir} is not a diffusers {self.name} directory: no {', '.join(missing)}/")
        present = {}
        for name in self.optional_components():
            if (model_dir / name).is_dir():
                defaults = model_dir / name / TRACK_DEFAULTS_FILE
                present[name] = json.loads(defaults.read_text()) if defaults.exists() else {}
        return LazyComponents(lambda name: self.load_component(model_dir, name, dtype), present)

    def optional_components(self, experts: int = 1) -> tuple[str, ...]:
        """Every optional component a model directory of this family may have (``Slot.component``)."""
        return tuple(slot.component for slot in self.slots(experts) if slot.component)

    def layout(self, experts: int = 1, present: Collection[str] = ()) -> tuple[Slot, ...]:
        """The slots of a model with ``experts`` experts whose directory has the optional components ``present``."""
        return tuple(slot for slot in self.slots(experts) if slot.component is None or slot.component in present)

    def present_components(self, geometry: ModelGeometry) -> frozenset[str]:
        """The optional components of the model ``geometry`` describes (those its tracks name)."""
        entries = {entry for track in geometry.tracks.values() for entry in track}
        return frozenset(slot.component for slot in self.slots(geometry.experts) if slot.component and slot.name in entries)

    def model_tracks(self, components: Any, experts: int = 1) -> dict[str, Any]:
        """``ModelGeometry`` fields ``tracks`` and ``track_defaults`` of a loaded model: the declared tracks whose
        slots it has, with the request defaults its optional components carry (``TRACK_DEFAULTS_FILE``)."""
        present: dict[str, dict[str, Any]] = getattr(components, "present", {})
        slots = {slot.name: slot for slot in self.layout(experts, present)}
        tracks = {track: entries for track, entries in self.tracks(experts).items() if all(e in slots for e in entries)}
        defaults = {}
        for track, entries in tracks.items():
            component = slots[entries[0]].component
            if component and present[component]:
                defaults[track] = present[component]
        return {"tracks": tracks, "track_defaults": defaults}

    def slots_of(self, geometry: ModelGeometry) -> tuple[Slot, ...]:
        return self.layout(geometry.experts, self.present_components(geometry))

    def slot(self, name: str, experts: int = 1) -> Slot:
        for slot in self.slots(experts):
            if slot.name == name:
                return slot
        raise KeyError(f"{self.name} has no engine slot {name!r}; slots: {', '.join(s.name for s in self.slots(experts))}")

    def extents(self, geometry: ModelGeometry) -> dict[str, Extent]:
        """Every dynamic axis over the preset's ranges (optimized for its defaults): TensorRT profiles."""
        preset, ranges = geometry.presets, geometry.ranges()
        scale, frames = geometry.vae_scale_factor, geometry.frames_range()
        f_low, f_high = frames.grid_values()
        h_low, h_high = ranges["HEIGHT"].grid_values()
        w_low, w_high = ranges["WIDTH"].grid_values()
        return {
            "batch": Extent(1, CFG_BATCH, DENOISER_MAX_BATCH),  # 1: a guidance-free request (GUIDANCE_SCALE 1)
            "frames": Extent(f_low, preset.num_frames, f_high),
            "latent_frames": Extent(*(geometry.latent_frames(f) for f in (f_low, preset.num_frames, f_high))),
            "height": Extent(h_low, preset.height, h_high),
            "width": Extent(w_low, preset.width, w_high),
            "latent_height": Extent(h_low // scale, preset.height // scale, h_high // scale),
            "latent_width": Extent(w_low // scale, preset.width // scale, w_high // scale),
        }

    def example_values(self, geometry: ModelGeometry, grow: int = 0) -> dict[str, int]:
        """Axis values of a small export example (``grow`` > 0: a different size, to check dynamic axes)."""
        preset: Preset = geometry.presets
        factor = max(geometry.vae_temporal_factor, 1)
        frames = (min(preset.num_frames, 4) if factor == 1 else factor + 1) + grow * factor
        step = geometry.pixel_multiple
        values = {"batch": CFG_BATCH + grow, **self.size_values(geometry, preset.height + grow * step, preset.width + grow * step, frames)}
        return {**values, **self.constants(geometry)}

    def warmup_values(self, geometry: ModelGeometry, height: int | None = None, width: int | None = None,
                      frames: int | None = None) -> dict[str, int]:
        """Axis values a runner warms up at before READY: the preset's most frequent shape (TensorRT's "opt"), or
        the size given (a deployment, or a benchmark, that serves another size most)."""
        preset: Preset = geometry.presets
        values = {axis: extent.opt for axis, extent in self.extents(geometry).items()}
        values.update(self.size_values(geometry, height or preset.height, width or preset.width, frames or preset.num_frames))
        return {**values, **self.constants(geometry)}

    @staticmethod
    def size_values(geometry: ModelGeometry, height: int, width: int, frames: int) -> dict[str, int]:
        """The size axes of a clip of ``height`` x ``width`` x ``frames``, in pixels and in latents."""
        s = geometry.vae_scale_factor
        return {"frames": frames, "latent_frames": geometry.latent_frames(frames), "height": height, "width": width,
                "latent_height": height // s, "latent_width": width // s}
