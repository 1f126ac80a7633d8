"""Decoded frames -> uint8 video and H.264 MP4 bytes (PyAV's bundled FFmpeg/x264).

torch is imported where it is used: ``postprocess`` (encoding only) loads without it.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

#: One uint8 level in the units of the decoder's frames ([-1, 1] -> [0, 255]).
LEVEL = 2 / 255


def uint8_frames(frames: "torch.Tensor") -> "torch.Tensor":
    """VAE output [F, 3, H, W] in [-1, 1] -> uint8 [F, H, W, 3], diffusers' rounding in fp32: x / 2 + 0.5, clipped to
    [0, 1], times 255, rounded half to even. The tail of every ``vae_decoder`` slot's module (``families.base.Uint8Frames``),
    so it runs where the decoder runs (on the GPU on GPU hosts) and its ONNX graph ends in Round and Cast(UINT8)."""
    import torch

    video = (frames.float() / 2 + 0.5).clamp(0.0, 1.0).permute(0, 2, 3, 1)
    return torch.round(video * 255).to(torch.uint8)


def to_uint8_frames(frames: np.ndarray) -> np.ndarray:
    """``uint8_frames`` of a numpy array (previews)."""
    import torch

    return uint8_frames(torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32))).numpy()


def rounding_excess(video: np.ndarray, frames: np.ndarray) -> float:
    """The least error of ``frames`` (float [F, 3, H, W]) that explains ``video`` (uint8 [F, H, W, 3], e.g. a graph's
    ``uint8_frames`` of them), in the frames' units: 0 where every value is its frame's rounding; a value one level
    off near a rounding boundary needs only the distance to it. How a uint8 graph is checked against its float module
    with a float tolerance: rounding, not the tolerance, decides which side of a boundary a value lands on."""
    levels = np.clip(frames.astype(np.float64) / 2 + 0.5, 0.0, 1.0).transpose(0, 2, 3, 1) * 255
    beyond_rounding = np.maximum(np.abs(video.astype(np.float64) - levels) - 0.5, 0.0)
    return float(beyond_rounding.max(initial=0.0) * LEVEL)


#: x264 speed preset: "veryfast" encodes several times faster than the default "medium" at the same
#: CRF (slightly larger files); on the served path the encode is on every request's critical path.
X264_PRESET = "veryfast"


def encode_mp4(video: np.ndarray, fps: int, crf: int = 18) -> bytes:
    """uint8 [F, H, W, 3] -> MP4 (H.264, yuv420p). Height and width must be even."""
    import av

    frames, height, width, _ = video.shape
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=int(fps), options={"crf": str(crf), "preset": X264_PRESET})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in video:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def decode_mp4(data: bytes) -> tuple[np.ndarray, float]:
    """MP4 bytes -> (uint8 [F, H, W, 3], frames per second)."""
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        return np.stack(frames), float(stream.average_rate)
