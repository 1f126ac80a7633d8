"""Client for ``t2v`` (the ensemble) and ``t2v_stream`` (progress events) over gRPC or HTTP, as a library and a command line.

    python client/t2v_client.py --prompt "a red panda in the snow" --out clip.mp4 --previews outputs/previews
    python client/t2v_client.py --protocol http --url localhost:8000 --prompt "..." --seed 7 --steps 20
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import queue
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .spec import (
    ELAPSED_S,
    MP4,
    NUMPY_DTYPES,
    PARAMETERS,
    PREVIEW,
    REMAINING_S,
    STEP,
    STEP_CACHED,
    STREAM_MODEL,
    STREAM_PARAMETERS,
    TOTAL_STEPS,
    USED_SEED,
    VIDEO,
    WIRE_DTYPES,
    Parameter,
)

DEFAULT_URLS = {"grpc": "localhost:8001", "http": "localhost:8000"}


@dataclass
class GenerationRequest:
    """Parameters of one clip; None leaves the server's default (see README, Parameters)."""

    prompt: str | bytes
    negative_prompt: str | bytes | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    fps: int | None = None
    precision: str | None = None
    sampler: str | None = None
    time_limit_s: float | None = None
    preview_every: int | None = None  # t2v_stream only (``T2VClient.stream``): a preview every N steps
    preset: str | None = None  # quality tier: draft | standard | final (explicit parameters override it)
    step_cache: float | None = None  # step cache threshold (0: off; README, Step caching)
    return_frames: bool | None = None  # False: VIDEO has 0 frames (``T2VClient.generate`` sets it when VIDEO is not asked for)

    def tensors(self, parameters: Sequence[Parameter] = PARAMETERS) -> dict[str, np.ndarray]:
        """Input arrays by input name, only for the ``parameters`` that are set."""
        out = {}
        for param in parameters:
            value = getattr(self, param.name.lower())
            if value is None:
                continue
            if param.triton_dtype == "TYPE_STRING":
                value = value.encode("utf-8") if isinstance(value, str) else value
            out[param.name] = np.array([value], dtype=NUMPY_DTYPES[param.triton_dtype])
        return out


@dataclass
class GenerationResult:
    video: np.ndarray | None  # uint8 [frames, height, width, 3]; None when not requested (``outputs``)
    mp4: bytes
    seed: int
    seconds: float


@dataclass
class Progress:
    """One denoising step of a streamed request, as ``t2v_stream`` reports it."""

    step: int
    total: int
    elapsed_s: float  # since the server received the request
    remaining_s: float  # the server's estimate of the denoising left
    preview: np.ndarray | None = None  # uint8 [h, w, 3] every PREVIEW_EVERY steps (gRPC)
    cached: bool = False  # the step reused the previous denoiser output (STEP_CACHE)


#: What ``T2VClient.stream`` yields: a Progress per step, then one GenerationResult.
StreamEvent = Progress | GenerationResult


#: Outputs of the ``t2v`` ensemble a client may ask for (USED_SEED always comes with them).
CLIP_OUTPUTS = (VIDEO, MP4)


class T2VClient:
    """Thin wrapper over tritonclient's gRPC or HTTP client for the ``t2v`` ensemble."""

    def __init__(self, url: str | None = None, protocol: str = "grpc", model: str = "t2v", timeout_s: float = 3600.0) -> None:
        if protocol not in DEFAULT_URLS:
            raise ValueError(f"protocol must be one of {sorted(DEFAULT_URLS)}")
        self.protocol, self.model, self.timeout_s = protocol, model, timeout_s
        self.url = url or DEFAULT_URLS[protocol]
        if protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        self._module = module
        kwargs = {} if protocol == "grpc" else {"network_timeout": timeout_s, "connection_timeout": 10.0}
        self._client = module.InferenceServerClient(self.url, **kwargs)

    def _inputs(self, request: GenerationRequest, parameters: Sequence[Parameter]) -> list[Any]:
        dtypes = {p.name: WIRE_DTYPES[p.triton_dtype] for p in parameters}
        inputs = []
        for name, array in request.tensors(parameters).items():
            tensor = self._module.InferInput(name, list(array.shape), dtypes[name])
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        return inputs

    def generate(self, request: GenerationRequest, outputs: Sequence[str] = CLIP_OUTPUTS) -> GenerationResult:
        """One clip from the ``t2v`` ensemble (no progress; ``stream`` reports it).

        ``outputs``: which of VIDEO, MP4 (and USED_SEED, always sent) the server returns: leaving out
        VIDEO spares the raw frames on the wire (13 MB at 576x320x24) when only the MP4 is wanted, and sends
        RETURN_FRAMES false so the server does not hand them on between its stages either.
        """
        if request.preview_every:
            raise ValueError("previews come with stream() (t2v_stream); the t2v ensemble has no PREVIEW_EVERY")
        unknown = set(outputs) - set(CLIP_OUTPUTS)
        if unknown or MP4 not in outputs:
            raise ValueError(f"outputs must include {MP4} and be among {CLIP_OUTPUTS}, got {tuple(outputs)}")
        if VIDEO not in outputs and request.return_frames is None:
            request = replace(request, return_frames=False)
        outputs = [self._module.InferRequestedOutput(name) for name in dict.fromkeys((*outputs, USED_SEED))]
        kwargs = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        start = time.perf_counter()
        result = self._client.infer(self.model, self._inputs(request, PARAMETERS), outputs=outputs, **kwargs)
        return _result(result.as_numpy, time.perf_counter() - start)

    def stream(self, request: GenerationRequest) -> Iterator[StreamEvent]:
        """The events of one request on ``t2v_stream``: a ``Progress`` per denoising step, then the ``GenerationResult``.

        gRPC streams every event (previews too); HTTP reads the SSE endpoint ``generate_stream``, which
        carries progress and the clip but flattens previews (refused there). Closing the iterator early
        (``break``, ``close()``, an exception) cancels the request on the server over gRPC.
        """
        start = time.perf_counter()
        events = self._grpc_events(request) if self.protocol == "grpc" else self._sse_events(request)
        with contextlib.closing(events):
            for outputs in events:
                if VIDEO in outputs:
                    yield _result(outputs.__getitem__, time.perf_counter() - start)
                    return
                scalar = lambda name: outputs[name].reshape(-1)[0]  # noqa: E731
                yield Progress(
                    int(scalar(STEP)), int(scalar(TOTAL_STEPS)), float(scalar(ELAPSED_S)), float(scalar(REMAINING_S)), outputs.get(PREVIEW),
                    bool(scalar(STEP_CACHED)) if STEP_CACHED in outputs else False,
                )

    def _grpc_events(self, request: GenerationRequest) -> Iterator[dict[str, np.ndarray]]:
        """Each response of a gRPC stream as {output name: array}; stops the stream (cancelling if unfinished) on close."""
        replies: queue.Queue = queue.Queue()
        self._client.start_stream(callback=lambda result, error: replies.put((result, error)))
        finished = False
        try:
            self._client.async_stream_infer(STREAM_MODEL, self._inputs(request, PARAMETERS + STREAM_PARAMETERS))
            while not finished:
                try:
                    result, error = replies.get(timeout=self.timeout_s)
                except queue.Empty:
                    raise TimeoutError(f"no response from {STREAM_MODEL} in {self.timeout_s:g} s") from None
                if error is not None:
                    finished = True  # the server ended the request
                    raise error
                outputs = {tensor.name: result.as_numpy(tensor.name) for tensor in result.get_response().outputs}
                finished = VIDEO in outputs
                yield outputs
        finally:
            self._client.stop_stream(cancel_requests=not finished)

    def _sse_events(self, request: GenerationRequest) -> Iterator[dict[str, np.ndarray]]:
        """Each event of ``generate_stream`` (HTTP, server-sent events) as {output name: array}."""
        from tritonclient.utils import InferenceServerException

        if request.preview_every:
            raise ValueError("previews stream over gRPC only: the HTTP generate_stream endpoint flattens them")
        body = {name: _json_value(array) for name, array in request.tensors(PARAMETERS).items()}
        http = urllib.request.Request(
            f"http://{self.url}/v2/models/{STREAM_MODEL}/generate_stream", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        try:
            response = urllib.request.urlopen(http, timeout=self.timeout_s)
        except urllib.error.HTTPError as exc:  # refused: a JSON error object, as an event where the model refused it
            body = exc.read().removeprefix(b"data: ") or b"{}"
            raise InferenceServerException(json.loads(body).get("error", str(exc)), status=str(exc.code)) from None
        with response:
            for line in response:
                if not line.startswith(b"data: "):
                    continue
                # Triton writes BYTES outputs (the MP4) into the JSON text byte for byte: latin-1 keeps every byte
                event = json.loads(line[len(b"data: "):].decode("latin-1"))
                if "error" in event:
                    raise InferenceServerException(event["error"])
                yield _sse_outputs(event)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "T2VClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _result(output: Any, seconds: float) -> GenerationResult:
    """The clip from a response's outputs (``output``: name -> array)."""
    mp4 = output(MP4).reshape(-1)[0]
    return GenerationResult(output(VIDEO), bytes(mp4), int(output(USED_SEED).reshape(-1)[0]), seconds)  # VIDEO: None if not requested


def _json_value(array: np.ndarray) -> Any:
    value = array.reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else value.item()


def _sse_outputs(event: dict[str, Any]) -> dict[str, np.ndarray]:
    """An SSE event's outputs as arrays; VIDEO (flattened by the endpoint) takes its shape from the MP4."""
    if MP4 not in event:
        return {name: np.asarray(value) for name, value in event.items() if name in (STEP, TOTAL_STEPS, ELAPSED_S, REMAINING_S, STEP_CACHED)}
    from .video import decode_mp4

    mp4 = event[MP4].encode("latin-1")
    frames = decode_mp4(mp4)[0]
    video = np.asarray(event[VIDEO], dtype=np.uint8).reshape(-1, *frames.shape[1:])  # 0 frames with RETURN_FRAMES false
    return {VIDEO: video, MP4: np.array([mp4], dtype=np.object_), USED_SEED: np.asarray(event[USED_SEED])}


class Spinner:
    """Elapsed-time indicator on stderr while a request is in flight."""

    def __init__(self, label: str, enabled: bool = True) -> None:
        self.label, self.enabled = label, enabled and sys.stderr.isatty()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)

    def _spin(self) -> None:
        start = time.perf_counter()
        for char in itertools.cycle("|/-\\"):
            if self._stop.wait(0.2):
                break
            sys.stderr.write(f"\r{char} {self.label} {time.perf_counter() - start:6.1f} s")
            sys.stderr.flush()
        sys.stderr.write("\r" + " " * (len(self.label) + 12) + "\r")

    def __enter__(self) -> "Spinner":
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._stop.set()
            self._thread.join()


class ProgressBar:
    """Denoising steps, elapsed time and the server's ETA on stderr: redrawn in place on a terminal, a line per step otherwise."""

    WIDTH = 30

    def __init__(self, label: str, enabled: bool = True, stream: Any = None) -> None:
        self.label, self.enabled, self.stream = label, enabled, stream or sys.stderr
        self.redraw = self.stream.isatty()
        self._drawn = False

    def update(self, progress: Progress) -> None:
        if not self.enabled:
            return
        filled = self.WIDTH * progress.step // max(progress.total, 1)
        text = (
            f"{self.label} [{'#' * filled}{'-' * (self.WIDTH - filled)}] step {progress.step}/{progress.total}, "
            f"{progress.elapsed_s:.1f} s, ETA {progress.remaining_s:.1f} s" + (", cached" if progress.cached else "")
        )
        self.stream.write(f"\r{text}" if self.redraw else f"{text}\n")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn and self.redraw:
            self.stream.write("\n")


#: Previews are a few latent pixels across: saved enlarged (nearest neighbour) by this factor.
PREVIEW_PNG_SCALE = 8


def save_preview(directory: Path, step: int, image: np.ndarray) -> Path:
    """``directory/step-NNN.png``: the preview of ``step``, enlarged PREVIEW_PNG_SCALE times."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step-{step:03d}.png"
    enlarged = image.repeat(PREVIEW_PNG_SCALE, axis=0).repeat(PREVIEW_PNG_SCALE, axis=1)
    Image.fromarray(enlarged).save(path)
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Generate a clip on a t2vserve Triton server, with a progress bar")
    parser.add_argument("--protocol", choices=sorted(DEFAULT_URLS), default="grpc")
    parser.add_argument("--url", default=None, help="host:port (default localhost:8001 for grpc, :8000 for http)")
    parser.add_argument("--model", default="t2v", help="the ensemble, used with --no-stream")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--negative-prompt", default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--guidance-scale", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--num-frames", type=int, default=None)
    parser.add_argument("--fps", type=int, default=None)
    parser.add_argument("--precision", default=None, help="denoiser track: unet3d int8 (default) | fp16; wan22 bf16 (the server checks)")
    parser.add_argument("--sampler", default=None, help="unet3d: ddim; wan22: unipc (default) | euler (the server checks)")
    parser.add_argument("--time-limit", dest="time_limit_s", type=float, default=None,
                        help="seconds the server may spend on the clip (default and maximum: the server's)")
    parser.add_argument("--previews", type=Path, default=None, help="save preview frames as DIR/step-NNN.png (gRPC)")
    parser.add_argument("--preview-every", type=int, default=None, help="with --previews: a preview every N steps (default 1)")
    parser.add_argument("--no-stream", action="store_true", help="call the t2v ensemble: no progress bar, only elapsed time")
    parser.add_argument("--preset", default=None, help="quality tier: draft | standard (default) | final; explicit parameters override it")
    parser.add_argument("--step-cache", type=float, default=None,
                        help="step cache threshold in [0, 1]: reuse the previous denoiser output while it barely changes (0: off)")
    parser.add_argument("--out", type=Path, default=Path("outputs/clip.mp4"), help="where to write the MP4")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the clip")
    parser.add_argument("--quiet", action="store_true")
    return parser


def _generate(client: T2VClient, request: GenerationRequest, args: argparse.Namespace) -> GenerationResult:
    """The clip, streamed with a progress bar (and previews saved) unless ``--no-stream``."""
    label = f"{client.url} ({args.protocol})"
    if args.no_stream:
        with Spinner(f"generating on {label}", enabled=not args.quiet):
            return client.generate(request, outputs=(MP4,))  # the MP4 is all the CLI writes
    bar = ProgressBar(label, enabled=not args.quiet)
    try:  # closing the stream on any way out (Ctrl-C included) cancels the request on the server
        with contextlib.closing(client.stream(request)) as events:
            for event in events:
                if isinstance(event, GenerationResult):
                    return event
                bar.update(event)
                if args.previews is not None and event.preview is not None:
                    save_preview(args.previews, event.step, event.preview)
    finally:
        bar.close()
    raise RuntimeError("the stream ended without a clip")


def main(argv: list[str] | None = None) -> int:
    from tritonclient.utils import InferenceServerException

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.previews is not None:
        if args.protocol != "grpc" or args.no_stream:
            parser.error("--previews needs the gRPC stream (--protocol grpc, without --no-stream)")
        args.preview_every = args.preview_every or 1
    names = {f.name for f in fields(GenerationRequest)}
    request = GenerationRequest(**{k: v for k, v in vars(args).items() if k in names})
    try:
        with T2VClient(args.url, args.protocol, args.model, args.timeout) as client:
            result = _generate(client, request, args)
    except InferenceServerException as exc:
        print(f"error: {exc.message() or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the stream was closed on the way out: the server stops at its next step
        print("cancelled", file=sys.stderr)
        return 130
    except Exception as exc:  # connection refused, DNS, ...: say what failed, no traceback
        print(f"error: cannot reach Triton at {args.url or DEFAULT_URLS[args.protocol]} ({args.protocol}): {exc}", file=sys.stderr)
        return 3
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(result.mp4)
    if not args.quiet:
        if result.video is None:  # --no-stream asks for the MP4 only
            print(f"wrote {args.out} ({len(result.mp4) / 1e6:.2f} MB, seed {result.seed}) in {result.seconds:.2f} s")
        else:
            frames, height, width, _ = result.video.shape
            print(f"wrote {args.out} ({frames} frames, {width}x{height}, seed {result.seed}) in {result.seconds:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
