"""``make demo``: tiny model -> ONNX -> embedded tritonserver -> one clip over gRPC -> MP4, with timings.

Stage timings of the served request come from Triton's own statistics API (per model: time spent
in compute), so they are the server's numbers, not the client's guess.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from .client import GenerationRequest, T2VClient
from .export import DEFAULT_TINY_DIR, export_model, quiet_libraries
from .families import get_family
from .server import DEFAULT_MODEL_REPOSITORY, REPO_ROOT, EmbeddedTritonServer
from .spec import UNET_TRACKS
from .video import decode_mp4

STAGES = ("preprocess", "text_encoder", "kv_projector", "scheduler", *UNET_TRACKS.values(), "vae_decoder", "postprocess", "t2v")


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
    parser.add_argument("--prompt", default="a red panda eating bamboo in a misty forest, cinematic")
    parser.add_argument("--num-frames", type=int, default=None)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "outputs" / "demo.mp4")
    parser.add_argument("--repository", type=Path, default=DEFAULT_MODEL_REPOSITORY)
    parser.add_argument("--calibration-prompts", type=int, default=None, help="INT8 calibration prompts (default: all)")
    parser.add_argument("--tiny-dir", type=Path, default=DEFAULT_TINY_DIR, help="where the tiny model is (built if absent)")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    timings: list[tuple[str, float]] = []
    start = time.perf_counter()
    quiet_libraries()
    if (args.tiny_dir / "model_index.json").exists():
        print(f"using the tiny model in {args.tiny_dir}")
    else:
        get_family("unet3d").build_tiny_model(args.tiny_dir)
    timings.append(("build tiny model", time.perf_counter() - start))
    start = time.perf_counter()
    export_model(args.tiny_dir, args.repository, "tiny", calibration_prompts=args.calibration_prompts)
    timings.append(("export ONNX + INT8 UNet", time.perf_counter() - start))

    log_path = REPO_ROOT / "outputs" / "tritonserver.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with EmbeddedTritonServer(args.repository, log_path=log_path) as server:
        timings.append(("start tritonserver", time.perf_counter() - start))
        print(f"tritonserver ready: gRPC {server.grpc_url}, HTTP {server.http_url} (log: {log_path})", flush=True)
        with T2VClient(server.grpc_url, "grpc") as client:
            result = client.generate(GenerationRequest(args.prompt, seed=args.seed, num_frames=args.num_frames))
        timings.append(("request over gRPC (end to end)", result.seconds))
        served = stage_times(server.grpc_url)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(result.mp4)
    frames, fps = decode_mp4(result.mp4)

    print("\nstage                                 seconds")
    for name, seconds in timings:
        print(f"  {name:<36}{seconds:8.2f}")
    print("\nserved request, per model (Triton statistics: executions, compute ms)")
    for name in STAGES:
        if name in served and (served[name][0] or name not in UNET_TRACKS.values()):  # the track that ran
            count, ms = served[name]
            print(f"  {name:<16}{count:6d} x {ms:10.1f} ms")
    print(f"\nprompt: {args.prompt!r}  seed: {result.seed}")
    print(f"wrote {args.out}: {len(frames)} frames of {frames.shape[2]}x{frames.shape[1]} at {fps:g} fps, {len(result.mp4)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
