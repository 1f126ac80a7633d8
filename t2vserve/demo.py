"""``make demo``: demo model -> ONNX -> embedded tritonserver -> one clip over gRPC -> MP4, with timings.

The demo model is the one the project trained on its shapes world (``t2vserve/data/trained/``) where
the family ships one, else the tiny random model (``--random`` forces it). The adherence detector's
reading of the clip is printed next to what the prompt asks for, and a strip of frames is saved as PNG.

Stage timings of the served request come from Triton's own statistics API (per model: time spent
in compute), so they are the server's numbers, not the client's guess.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from PIL import Image

from .client import GenerationRequest, T2VClient
from .export import demo_model_dir, export_model, quiet_libraries
from .train.fit import TRAIN_LOG
from .families import DEFAULT_FAMILY, FAMILIES, get_family
from .server import DEFAULT_MODEL_REPOSITORY, REPO_ROOT, EmbeddedTritonServer
from .quality.adherence import matches, read_clip
from .spec import CONDITIONING_MODEL, DENOISER
from .train.samples import strip
from .train.world import DEMO_PROMPT, parse_prompt
from .video import decode_mp4


def default_repository(family: str) -> Path:
    """The committed repository serves the default family; other families' demos export beside it."""
    return DEFAULT_MODEL_REPOSITORY if family == DEFAULT_FAMILY else REPO_ROOT / "artifacts" / f"model_repository-{family}"


def stage_times(url: str) -> dict[str, tuple[int, float]]:
    """Per model: (executions, total compute milliseconds) from Triton's statistics API."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        stats = client.get_inference_statistics(as_json=True)
    out = {}
    for model in stats.get("model_stats", []):
        infer = model.get("inference_stats", {})
        total_ns = sum(int(infer.get(key, {}).get("ns", 0)) for key in ("compute_input", "compute_infer", "compute_output"))
        out[model["name"]] = (int(model.get("execution_count", 0)), total_ns / 1e6)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(FAMILIES), default=DEFAULT_FAMILY, help="model family of the tiny demo model")
    parser.add_argument("--prompt", default=DEMO_PROMPT)
    parser.add_argument("--num-frames", type=int, default=None)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=None, help="default outputs/demo.mp4 (unet3d), outputs/demo-<family>.mp4")
    parser.add_argument("--repository", type=Path, default=None, help="default: model_repository/ (unet3d), artifacts/model_repository-<family>")
    # ONNX Runtime's percentile calibration of the trained UNet is slow on the CPU: all 8 prompts took
    # 758 s on 2 cores, 2 prompts about 3 minutes for the whole export (make quality uses all 8).
    parser.add_argument("--calibration-prompts", type=int, default=2, help="INT8 calibration prompts (default 2; 0: all)")
    parser.add_argument("--tiny-dir", type=Path, default=None, help="a diffusers directory to serve (built as the tiny random model if absent)")
    parser.add_argument("--random", action="store_true", help="the tiny random-weight model even where a trained one ships")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    timings: list[tuple[str, float]] = []
    start = time.perf_counter()
    quiet_libraries()
    model_dir = demo_model_dir(args.model, args.random, args.tiny_dir)
    trained = (model_dir / TRAIN_LOG).exists()
    repository = args.repository or default_repository(args.model)
    timings.append((f"{'trained' if trained else 'random'} {args.model} demo model", time.perf_counter() - start))
    start = time.perf_counter()
    geometry = export_model(model_dir, repository, get_family(args.model).tiny_preset, calibration_prompts=args.calibration_prompts or None)
    timings.append(("export ONNX (+ INT8 tracks)", time.perf_counter() - start))
    slots = get_family(args.model).slots_of(geometry)
    denoisers = [slot.name for slot in slots if slot.role == DENOISER]
    names = [slot.name for slot in slots]  # text encoder, K/V projector (behind the conditioning cache), denoisers, VAE decoder
    stages = ["preprocess", CONDITIONING_MODEL, *names[:2], "scheduler", *names[2:], "postprocess", "t2v"]

    log_path = REPO_ROOT / "outputs" / "tritonserver.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with EmbeddedTritonServer(repository, log_path=log_path) as server:
        timings.append(("start tritonserver", time.perf_counter() - start))
        print(f"tritonserver ready: gRPC {server.grpc_url}, HTTP {server.http_url} (log: {log_path})", flush=True)
        with T2VClient(server.grpc_url, "grpc") as client:
            result = client.generate(GenerationRequest(args.prompt, seed=args.seed, num_frames=args.num_frames))
        timings.append(("request over gRPC (end to end)", result.seconds))
        served = stage_times(server.grpc_url)
    out = args.out or REPO_ROOT / "outputs" / ("demo.mp4" if args.model == DEFAULT_FAMILY else f"demo-{args.model}.mp4")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(result.mp4)
    frames, fps = decode_mp4(result.mp4)
    png = out.with_suffix(".png")
    Image.fromarray(strip(result.video, min(8, len(result.video)))).save(png)

    print("\nstage                                 seconds")
    for name, seconds in timings:
        print(f"  {name:<36}{seconds:8.2f}")
    print("\nserved request, per model (Triton statistics: executions, compute ms)")
    for name in stages:
        if name in served and (served[name][0] or name not in denoisers):  # the tracks that ran
            count, ms = served[name]
            print(f"  {name:<16}{count:6d} x {ms:10.1f} ms")
    print(f"\nprompt: {args.prompt!r}  seed: {result.seed}  model: {model_dir}")
    asked = parse_prompt(args.prompt)
    reading = read_clip(result.video)
    agree = matches(reading, asked)
    print("  attribute  prompt      detected")
    for key in ("colour", "shape", "motion"):
        mark = "" if asked[key] is None else ("  ok" if agree[key] else "  differs")
        print(f"  {key:<10} {asked[key] or '-':<11} {getattr(reading, key)}{mark}")
    if not trained:
        print("  (random weights: the clip is noise; the detector's reading means nothing)")
    print(f"wrote {png} (frame strip)")
    print(f"wrote {out}: {len(frames)} frames of {frames.shape[2]}x{frames.shape[1]} at {fps:g} fps, {len(result.mp4)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
