"""Client for the ``t2v`` ensemble over tritonclient gRPC or HTTP, as a library and a command line.

    python client/t2v_client.py --prompt "a red panda in the snow" --out clip.mp4
    python client/t2v_client.py --protocol http --url localhost:8000 --prompt "..." --seed 7 --steps 20
"""

from __future__ import annotations

import argparse
import itertools
import sys
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from .spec import MP4, NUMPY_DTYPES, PARAMETERS, VIDEO, WIRE_DTYPES

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
    preset: str | None = None  # quality tier: draft | standard | final (explicit parameters override it)

    def tensors(self) -> dict[str, np.ndarray]:
        """Input arrays by ensemble input name, only for the parameters that are set."""
        out = {}
        for param in PARAMETERS:
            value = getattr(self, param.name.lower())
            if value is None:
                continue
            if param.triton_dtype == "TYPE_STRING":
                value = value.encode("utf-8") if isinstance(value, str) else value
            out[param.name] = np.array([value], dtype=NUMPY_DTYPES[param.triton_dtype])
        return out


@dataclass
class GenerationResult:
    video: np.ndarray  # uint8 [frames, height, width, 3]
    mp4: bytes
    seed: int
    seconds: float


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

    def generate(self, request: GenerationRequest) -> GenerationResult:
        dtypes = {p.name: WIRE_DTYPES[p.triton_dtype] for p in PARAMETERS}
        inputs = []
        for name, array in request.tensors().items():
            tensor = self._module.InferInput(name, list(array.shape), dtypes[name])
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        outputs = [self._module.InferRequestedOutput(name) for name in (VIDEO, MP4, "USED_SEED")]
        kwargs = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        start = time.perf_counter()
        result = self._client.infer(self.model, inputs, outputs=outputs, **kwargs)
        seconds = time.perf_counter() - start
        mp4 = result.as_numpy(MP4).reshape(-1)[0]
        return GenerationResult(result.as_numpy(VIDEO), bytes(mp4), int(result.as_numpy("USED_SEED").reshape(-1)[0]), seconds)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "T2VClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Generate a clip with the t2v ensemble on a Triton server")
    parser.add_argument("--protocol", choices=sorted(DEFAULT_URLS), default="grpc")
    parser.add_argument("--url", default=None, help="host:port (default localhost:8001 for grpc, :8000 for http)")
    parser.add_argument("--model", default="t2v")
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
    parser.add_argument("--preset", default=None, help="quality tier: draft | standard (default) | final; explicit parameters override it")
    parser.add_argument("--out", type=Path, default=Path("outputs/clip.mp4"), help="where to write the MP4")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the clip")
    parser.add_argument("--quiet", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    from tritonclient.utils import InferenceServerException

    args = build_parser().parse_args(argv)
    names = {f.name for f in fields(GenerationRequest)}
    request = GenerationRequest(**{k: v for k, v in vars(args).items() if k in names})
    try:
        with T2VClient(args.url, args.protocol, args.model, args.timeout) as client:
            with Spinner(f"generating on {client.url} ({args.protocol})", enabled=not args.quiet):
                result = client.generate(request)
    except InferenceServerException as exc:
        print(f"error: {exc.message() or exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # connection refused, DNS, ...: say what failed, no traceback
        print(f"error: cannot reach Triton at {args.url or DEFAULT_URLS[args.protocol]} ({args.protocol}): {exc}", file=sys.stderr)
        return 3
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(result.mp4)
    frames, height, width, _ = result.video.shape
    if not args.quiet:
        print(f"wrote {args.out} ({frames} frames, {width}x{height}, seed {result.seed}) in {result.seconds:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
