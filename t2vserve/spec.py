"""The one source of truth: request parameters, presets, tensor names (a model's geometry and K/V layout: ``geometry``).

Export, repository configs, the Triton models, the client and the tests read these definitions;
nothing else restates a range, a default or a tensor name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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
FRAMES = "FRAMES"  # uint8 [frames, H, W, 3]: decoded frames, converted in the decoder slot (video.uint8_frames)
VIDEO = "VIDEO"  # uint8 [frames, H, W, 3]
MP4 = "MP4"  # bytes [1]: H.264 MP4 file
USED_SEED = "USED_SEED"  # int64 [1]: the seed the clip used (drawn by the server when the request gave none)
DEADLINE = "DEADLINE"  # fp64 [1]: unix time (s) at which the request's TIME_LIMIT_S runs out (set by preprocess)
# bytes [1]: the response cache's key of a request with an explicit SEED (params.ResolvedRequest.response_key); empty: not cacheable
RESPONSE_KEY = "RESPONSE_KEY"

#: The streaming entry (decoupled): progress per step, previews, then the clip; beside the ensemble ``t2v``.
STREAM_MODEL = "t2v_stream"
# Responses of the streaming entry ``t2v_stream``: one per denoising step, then the final one (VIDEO, MP4, USED_SEED)
STEP = "STEP"  # int32 [1]: denoising steps done
TOTAL_STEPS = "TOTAL_STEPS"  # int32 [1]: steps of the request
ELAPSED_S = "ELAPSED_S"  # fp32 [1]: seconds since the request arrived
REMAINING_S = "REMAINING_S"  # fp32 [1]: estimated seconds of denoising left (mean step time x steps left)
PREVIEW = "PREVIEW"  # uint8 [h, w, 3]: the middle latent frame through the model's preview decoder (previews.py)
STEP_CACHED = "STEP_CACHED"  # bool [1]: the step reused the previous denoiser output (STEP_CACHE), no denoiser call

#: Roles of the engine slots (each family declares its slots in ``families/<family>.py``).
TEXT_ENCODER, KV_PROJECTOR, DENOISER, VAE_DECODER = "text_encoder", "kv_projector", "denoiser", "vae_decoder"

#: Largest batch the denoiser entries accept: Triton's dynamic batcher joins the CFG pairs (batch 2) and the
#: guidance-free calls (batch 1, GUIDANCE_SCALE 1) of concurrent requests, so this is 4 to 8 requests' worth.
#: Each request's pair stays together.
DENOISER_MAX_BATCH = 8
#: How long the denoisers' dynamic batcher holds a lone request for a partner. Concurrent requests step
#: in turn otherwise: while one executes, the other queues alone and is run alone as soon as the first
#: finishes, so two clips never share a batch (measured, H100: 80 of 80 executions at batch 2 with two
#: clients). The sampling loops' step barrier (``t2vserve.step_barrier``) releases the loops of a device
#: together, so their calls arrive within a fraction of this; it costs a lone request this much per step
#: (before the barrier: 4000, 80 ms of a 20-step clip).
DENOISER_QUEUE_DELAY_US = 1000
#: Config parameter of the sampling loops (``scheduler``, ``t2v_stream``): the step barrier's window in
#: microseconds, the denoisers' batcher delay (a partner's call younger than this is still queued: join it); 0: off.
STEP_BARRIER_PARAMETER = "step_barrier_window_us"
#: One classifier-free-guidance pair (unconditional + conditional): the batch of one guided request's denoiser
#: call (a request at GUIDANCE_SCALE 1 sends the conditional half alone, batch 1).
CFG_BATCH = 2
#: Scheduler (sampling loop) instances: how many requests can be denoising at once, feeding the batcher (per GPU
#: where the scheduler is a GPU instance: Triton's KIND_GPU count is per device).
SCHEDULER_INSTANCES = 4
#: Postprocess (output check + H.264) instances: one per request that can be denoising at once. A clip's encode
#: (0.76 s at 576x320x24 on the CPU, GPU round 3) runs beside the other requests' denoising, but the requests of a
#: batched step finish together (lockstep, up to SCHEDULER_INSTANCES within one step): with fewer encoders the
#: last of them would wait for the others' encodes. The stubs are light (no torch), the encodes use the host's other cores.
POSTPROCESS_INSTANCES = SCHEDULER_INSTANCES

#: Prompts longer than this many characters are refused before tokenizing.
PROMPT_MAX_CHARS = 2000

#: Streamed requests denoising at once: worker threads of the one ``t2v_stream`` instance (as many as scheduler instances).
STREAM_CONCURRENCY = SCHEDULER_INSTANCES
#: Server-side maximum (and default) of a request's TIME_LIMIT_S: ``preprocess``'s config parameter
#: ``max_time_limit_s`` (an operator may lower or raise it there); the shortest limit a request may ask for.
MAX_TIME_LIMIT_S = 3600.0
MIN_TIME_LIMIT_S = 0.1
#: The Python BLS entry that turns INPUT_IDS into the packed K/V, through a cache (``triton_models/conditioning.py``).
CONDITIONING_MODEL = "conditioning"
#: Its default byte budget (config parameter ``cache_bytes``; 0 turns the cache off). One text's K/V is
#: ``text_max_length x kv_width x 4`` bytes: tiny unet3d about 0.1 MB, ModelScope 7.7 MB, Wan2.2-5B 377 MB.
CONDITIONING_CACHE_BYTES = 2 * 2**30
#: Default byte budget of each ``scheduler`` instance's response cache (config parameter ``response_cache_bytes``):
#: 0, off, as Triton's own response cache is, since load tests (perf_analyzer, the benchmarks, the soak) send one
#: request with a fixed SEED again and again and would measure cache hits. An operator turns it on with a budget,
#: e.g. 268435456 (256 MiB): denoised latents of requests with an explicit SEED, kept on their device (576x320x24: 1.1 MB each).
RESPONSE_CACHE_BYTES = 0
#: Token rows whose K/V is pinned in that cache (the default negative prompt), written by export next to it.
PINNED_TEXTS_FILE = "pinned_texts.json"
#: The prompt filter's term lists (``t2vserve.safety``): ``preprocess``'s config parameter ``safety_filter``.
SAFETY_FILTER_FILE = "safety_filter.json"


# --------------------------------------------------------------------------------------------------
# Request parameters of the ensemble ``t2v``
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Range:
    """Inclusive numeric range, optionally on a grid: ``value % multiple_of == remainder``."""

    low: float
    high: float
    multiple_of: int = 1
    remainder: int = 0

    def describe(self) -> str:
        text = f"[{_fmt(self.low)}, {_fmt(self.high)}]"
        if self.multiple_of > 1:
            grid = f"a multiple of {self.multiple_of}"
            text += f", {grid}" if not self.remainder else f", {self.multiple_of}k+{self.remainder}"
        return text

    def contains(self, value: float) -> bool:
        on_grid = self.multiple_of <= 1 or int(value) % self.multiple_of == self.remainder
        return self.low <= value <= self.high and on_grid

    def nearest(self, value: float) -> int:
        """The allowed integer closest to ``value`` (halves round up), clamped into the range."""
        step = max(self.multiple_of, 1)
        low, high = self.grid_values()
        snapped = self.remainder + math.floor((value - self.remainder) / step + 0.5) * step
        return int(min(max(snapped, low), high))

    def grid_values(self) -> tuple[int, int]:
        """Smallest and largest allowed value."""
        step = max(self.multiple_of, 1)
        low = int(self.low) + (self.remainder - int(self.low)) % step
        high = int(self.high) - (int(self.high) - self.remainder) % step
        return low, high


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


@dataclass(frozen=True)
class Preset:
    """Default geometry and sampling settings of a served model, plus the ranges it accepts."""

    name: str
    family: str
    height: int
    width: int
    num_frames: int
    fps: int
    steps: int
    guidance_scale: float
    height_range: tuple[int, int]
    width_range: tuple[int, int]
    frames_range: tuple[int, int]
    sampler: str = "ddim"
    negative_prompt: str = ""


#: Wan2.2's own default negative prompt (its ``sample_neg_prompt``), used when a request gives none.
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
    "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)

#: Presets by name; each names its model family. ``tiny`` and ``wan22-tiny`` are the project's own
#: demo/test models; ``modelscope`` matches ModelScope text-to-video-ms / ZeroScope v2 576w weights;
#: ``wan22-480p`` / ``wan22-720p`` Wan2.2 TI2V-5B or T2V-A14B (frames 4k+1, 24 fps, 50 steps, CFG 5).
PRESETS: dict[str, Preset] = {
    "tiny": Preset("tiny", "unet3d", 64, 64, 8, 8, 10, 3.0, (32, 128), (32, 128), (1, 16)),
    "modelscope": Preset("modelscope", "unet3d", 320, 576, 24, 8, 25, 9.0, (256, 576), (256, 1024), (8, 32)),
    "wan22-tiny": Preset("wan22-tiny", "wan22", 64, 64, 9, 24, 10, 5.0, (32, 128), (32, 128), (1, 17), "unipc", WAN_NEGATIVE_PROMPT),
    "wan22-480p": Preset("wan22-480p", "wan22", 480, 832, 81, 24, 50, 5.0, (256, 736), (256, 1280), (5, 121), "unipc", WAN_NEGATIVE_PROMPT),
    "wan22-720p": Preset("wan22-720p", "wan22", 704, 1280, 121, 24, 50, 5.0, (256, 736), (256, 1280), (5, 121), "unipc", WAN_NEGATIVE_PROMPT),
}

# --------------------------------------------------------------------------------------------------
# Quality tiers: the request parameter PRESET (draft / standard / final)
# --------------------------------------------------------------------------------------------------
#: PRECISION tracks that are quantized, in order of preference (a draft runs the first the server has).
QUANTIZED_TRACKS = ("int8", "fp8")
#: The PRECISION track of a guidance- and step-distilled student (``t2vserve.train.distill``), where the model has one.
DISTILLED_TRACK = "distilled"
#: Request parameters a track may default on its own (``ModelGeometry.track_defaults``).
TRACK_DEFAULT_PARAMETERS = ("STEPS", "GUIDANCE_SCALE")
#: The draft tier's STEP_CACHE default (the other tiers: 0, off).
DRAFT_STEP_CACHE = 0.2


@dataclass(frozen=True)
class QualityTier:
    """One value of the request parameter PRESET: one choice of resolution, frames, steps, track and step caching.

    Not a ``Preset`` (a model's geometry: tiny, modelscope, wan22-480p): a tier is relative to the
    served model's preset, so every family and size gets concrete values inside its ranges
    (``ModelGeometry.defaults(tier)``). Explicit request parameters override what the tier sets.
    """

    name: str
    resolution_scale: float  # of the preset's height and width (aspect kept, snapped to the model's grid and range)
    frames_scale: float  # of the preset's frames (1.0: a draft previews the final clip's length)
    steps_scale: float  # of the preset's steps, rounded, inside STEPS_RANGE
    precision: str  # "quantized": a QUANTIZED_TRACKS track where the model has one | "default" | "full": a non-quantized track
    step_cache_threshold: float = 0.0  # default STEP_CACHE of the tier's requests (t2vserve.step_cache): 0 = off
    doc: str = ""


QUALITY_TIERS: dict[str, QualityTier] = {
    tier.name: tier
    for tier in (
        # draft's step cache: measured on the demo model (docs/bench/step-cache-draft.md, README "Step caching")
        QualityTier("draft", 0.5, 1.0, 0.5, "quantized", DRAFT_STEP_CACHE,
                    "low latency: half the height and width, half the steps, quantized track, step cache"),
        QualityTier("standard", 1.0, 1.0, 1.0, "default", doc="the model preset's defaults (what a request without PRESET gets)"),
        QualityTier("final", 1.0, 1.0, 1.5, "full", doc="quality: 1.5x the steps on the full-precision track"),
    )
}
DEFAULT_TIER = "standard"

STEPS_RANGE = Range(1, 100)
#: What ``python -m t2vserve.batcher_delay --denoiser-queue-delay-us`` accepts (0: a latency-first deployment).
DENOISER_QUEUE_DELAY_RANGE_US = Range(0, 1_000_000)
GUIDANCE_RANGE = Range(1.0, 30.0)
SEED_RANGE = Range(0, 2**63 - 1)
FPS_RANGE = Range(1, 60)
#: PREVIEW_EVERY: 0 sends no previews, N a preview after every N-th step.
PREVIEW_EVERY_RANGE = Range(0, 100)
#: STEP_CACHE: the step cache's threshold (``t2vserve.step_cache``): 0 = off (the default); larger skips more steps.
STEP_CACHE_RANGE = Range(0.0, 1.0)
#: Steps in a row the step cache may serve from one computed output (MagCache's K).
STEP_CACHE_MAX_CONSECUTIVE_SKIPS = 2


def time_limit_range(maximum: float = MAX_TIME_LIMIT_S) -> Range:
    """Allowed TIME_LIMIT_S under a server whose maximum is ``maximum`` seconds."""
    return Range(MIN_TIME_LIMIT_S, maximum)


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
    Parameter("STEPS", "TYPE_INT32", True, "denoising steps"),
    Parameter("GUIDANCE_SCALE", "TYPE_FP32", True, "classifier-free guidance scale"),
    Parameter("SEED", "TYPE_INT64", True, "noise seed; default: a random seed, returned in SEED"),
    Parameter("HEIGHT", "TYPE_INT32", True, "frame height in pixels"),
    Parameter("WIDTH", "TYPE_INT32", True, "frame width in pixels"),
    Parameter("NUM_FRAMES", "TYPE_INT32", True, "number of frames"),
    Parameter("FPS", "TYPE_INT32", True, "frames per second of the MP4"),
    Parameter("PRECISION", "TYPE_STRING", True,
              "denoiser track of the model (unet3d: int8 default, fp8, fp16, distilled where the model has a student; wan22: bf16 default, fp8, int8)"),
    Parameter("SAMPLER", "TYPE_STRING", True, "sampler of the model's family (unet3d: ddim; wan22: unipc default, euler)"),
    Parameter("TIME_LIMIT_S", "TYPE_FP32", True, "seconds the request may run; default and maximum: the server's max_time_limit_s"),
    Parameter("PRESET", "TYPE_STRING", True, "quality tier: draft | standard (default) | final (QUALITY_TIERS)"),
    Parameter("STEP_CACHE", "TYPE_FP32", True, "step cache threshold: reuse the previous denoiser output while it barely changes; 0 = off"),
    Parameter("RETURN_FRAMES", "TYPE_BOOL", True,
              "whether VIDEO carries the clip's frames (default true); false: VIDEO has 0 frames and the server does not hand the "
              "frames on (an ensemble computes every output of every step, whichever outputs the client asks for)"),
)

#: Inputs of the streaming entry ``t2v_stream`` beyond PARAMETERS (validated by the stream model itself).
STREAM_PARAMETERS: tuple[Parameter, ...] = (
    Parameter("PREVIEW_EVERY", "TYPE_INT32", True, "a PREVIEW after every N-th denoising step; 0 (default): none"),
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
    "SAMPLER": "TYPE_STRING",
    "TIME_LIMIT_S": "TYPE_FP32",
    "STEP_CACHE": "TYPE_FP32",
    "RETURN_FRAMES": "TYPE_BOOL",
}
#: Resolved parameters that only ``postprocess`` reads (the others go to the sampling loop).
POSTPROCESS_PARAMETERS = ("FPS", "RETURN_FRAMES")


#: Config data types of the ensemble's parameters -> numpy dtype and the wire name tritonclient uses.
NUMPY_DTYPES: dict[str, Any] = {"TYPE_STRING": object, "TYPE_INT32": "int32", "TYPE_INT64": "int64", "TYPE_FP32": "float32", "TYPE_BOOL": "bool"}
WIRE_DTYPES = {"TYPE_STRING": "BYTES", "TYPE_INT32": "INT32", "TYPE_INT64": "INT64", "TYPE_FP32": "FP32", "TYPE_BOOL": "BOOL"}
