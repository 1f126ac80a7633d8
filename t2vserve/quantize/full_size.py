"""Full-size INT8 and FP8 Q/DQ ONNX of every family's denoiser, on the GPU machine (``client/gpu_qdq_export.sh``).

    python -m t2vserve.quantize.full_size --out OUT                       # GPU: every family x int8, fp8
    python -m t2vserve.quantize.full_size --out OUT --tiny --device cpu   # dry run on the tiny models

For each family the full-size model of its ``full_size_preset`` is built once with random weights
(``Family.build_full_size_model``: the ModelScope-size UNet3D, 1.41B parameters; the Wan2.2 TI2V-5B
transformer, its text encoder cut to one layer since nothing times it), then each job
(family, format) runs in its own process: a short calibration capture (one prompt, two steps, a
small resolution: random-weight speed-only models), ModelOpt quantization, TorchScript Q/DQ export
with the weights folded to 8-bit values in memory (external data above 2 GB), the two-sided ONNX
Runtime check against the torch module on the tiny preset's small shapes, the report (file sizes,
times, peak RSS and GPU memory), and the graph is deleted (64 GB disk). Families run side by side
(one process chain each), jobs of one family one after the other. ``OUT/qdq-export.json`` and
``.md`` are rewritten after every job, so a run cut short keeps what finished.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("t2vserve.quantize.full_size")
RESULTS = "qdq-export"


def _family(name: str) -> Any:
    from ..families import get_family

    return get_family(name)


def default_jobs() -> list[str]:
    """Every family x every quantized track: ``unet3d:int8``, ... (from the registry and spec)."""
    from ..families import FAMILIES
    from ..spec import QUANTIZED_TRACKS

    return [f"{name}:{fmt}" for name in FAMILIES for fmt in QUANTIZED_TRACKS]


def build_model(family_name: str, work: Path, tiny: bool, device: str) -> dict[str, Any]:
    """The family's model directory: the tiny demo model, or full size with random weights (bf16/fp16 on disk)."""
    from ..export import ensure_tiny_model

    family, directory, start = _family(family_name), work / f"model-{family_name}", time.perf_counter()
    if not (directory / "model_index.json").exists():
        shutil.rmtree(directory, ignore_errors=True)
        if tiny:
            ensure_tiny_model(family_name, directory)
        else:  # text_layers: a one-layer text encoder where the family has a huge one nobody times here (UMT5-XXL)
            family.build_full_size_model(directory, family.full_size_preset, family.reference_dtype, device, text_layers=1)
    size = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
    return {"model_dir": str(directory), "build_s": round(time.perf_counter() - start, 1), "model_bytes_on_disk": size}


def skip_modelopt_jit_extensions() -> None:
    """ModelOpt JIT-compiles CUDA fake-quantization extensions at first use (nvcc + ninja, minutes per process);
    marked absent, it runs its torch implementations, as it does where they fail to build: enough for a
    two-sample calibration and the check."""
    from modelopt.torch.quantization import extensions

    for loader in (extensions.get_cuda_ext, extensions.get_cuda_ext_fp8, extensions.get_cuda_ext_mx):
        loader.extension = None  # type: ignore[attr-defined]


def run_job(job: str, work: Path, tiny: bool, device: str) -> dict[str, Any]:
    """One (family, format): quantize its first denoiser slot of that track, export, check, measure, delete the graph."""
    import torch

    from ..export import quiet_libraries
    from .calibration import CaptureSettings
    from .recipe import Recipe
    from .track import QUANTIZATION_REPORT, QdqCheckFailed, quantize_slot

    quiet_libraries()
    skip_modelopt_jit_extensions()
    family_name, fmt = job.split(":")
    family = _family(family_name)
    start = time.perf_counter()
    components = family.components(work / f"model-{family_name}", torch.float32)
    geometry = family.geometry(components, family.tiny_preset if tiny else family.full_size_preset)
    slot = family.slot(geometry.tracks[fmt][0], geometry.experts)
    directory = work / "graphs" / slot.name
    shutil.rmtree(directory, ignore_errors=True)
    row: dict[str, Any] = {"job": job, "slot": slot.name, "preset": geometry.preset, "device": device}
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        capture = CaptureSettings.short(geometry)
        row["capture"] = capture.__dict__
        report = quantize_slot(slot, components, geometry, directory, Recipe.load(str(slot.recipe)), capture, device,
                               shapes_preset=family.tiny_preset)
    except QdqCheckFailed as exc:
        report = {**json.loads((directory / QUANTIZATION_REPORT).read_text()), "error": str(exc)[:500]}
    except Exception as exc:  # one job's failure must not lose the others
        log.exception("%s failed", job)
        report = {"error": f"{type(exc).__name__}: {exc}"[:800]}
    row.update(report)
    row["parameters"] = sum(p.numel() for p in slot.module(components).parameters())
    row["wall_s"] = round(time.perf_counter() - start, 1)
    row["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    if device == "cuda":
        row["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    shutil.rmtree(directory, ignore_errors=True)  # 64 GB of disk: the next graph needs the room
    return row


def _bytes(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _count(n: float) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "| graph | format | parameters | files (graph + external data) | weights FP32 -> stored | export (trace, fold, save) "
        "| capture + quantize | ORT check: error / quantized error | peak RSS | peak GPU | job |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["jobs"].values():
        if "qdq" not in row:
            lines.append(f"| {row.get('slot', row['job'])} | {row['job'].replace('-', ':').split(':')[-1]} | | failed: {row.get('error', '?')[:150]} | | | | | | | |")
            continue
        files = " + ".join(f"{name} {_bytes(size)}" for name, size in row["files"].items() if name.startswith("model.onnx"))
        t, check = row["timings_s"], row["check"]
        verdict = "in band" if row["check_passed"] else "OUT OF BAND"
        gpu = f"{row['peak_gpu_gib']:.1f} GiB" if "peak_gpu_gib" in row else "-"
        lines.append(
            f"| {row['slot']} | {row['format']} | {_count(row['parameters'])} | {files} | {_bytes(row['weight_bytes']['fp32'])} -> "
            f"{_bytes(row['weight_bytes'][row['format']])} | {t['export_s']:.0f} s | {t['capture_s'] + t['quantize_s']:.0f} s "
            f"| {check['ratio']:.2f} ({verdict}; max abs vs float {check['max_abs_onnxruntime_vs_float']:.2e}) | {row['peak_rss_gib']:.1f} GiB "
            f"| {gpu} | {row['wall_s']:.0f} s |"
        )
    builds = ", ".join(f"{name}: {b.get('build_s', 0):.0f} s, {_bytes(b.get('model_bytes_on_disk', 0))}" for name, b in results["models"].items())
    return "\n".join(lines + ["", f"Models built (random weights): {builds}.", ""])


class Driver:
    """Runs the jobs as subprocesses (one chain per family, chains in parallel) and writes the results."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.lock = args, threading.Lock()
        self.results: dict[str, Any] = {"command": " ".join(sys.argv), "tiny": args.tiny, "device": args.device, "models": {}, "jobs": {}}

    def _child(self, mode: list[str], name: str) -> dict[str, Any]:
        result = self.args.work / "results" / f"{name}.json"
        result.parent.mkdir(parents=True, exist_ok=True)
        result.unlink(missing_ok=True)
        command = [sys.executable, "-m", "t2vserve.quantize.full_size", *mode, "--work", str(self.args.work), "--device", self.args.device,
                   "--result", str(result), *(["--tiny"] if self.args.tiny else [])]
        with open(self.args.out / f"{RESULTS}.log", "a") as log_file:
            code = subprocess.run(command, stdout=log_file, stderr=subprocess.STDOUT).returncode
        if result.exists():
            return dict(json.loads(result.read_text()))
        return {"job": name, "error": f"process exited with {code} before writing its result (see {RESULTS}.log)"}

    def _save(self) -> None:
        with self.lock:
            (self.args.out / f"{RESULTS}.json").write_text(json.dumps(self.results, indent=2, default=str) + "\n")
            (self.args.out / f"{RESULTS}.md").write_text(markdown(self.results))

    def chain(self, family_name: str, jobs: list[str]) -> None:
        build = self._child(["--build", family_name], f"build-{family_name}")
        with self.lock:
            self.results["models"][family_name] = build
        for job in jobs:
            if "error" in build:
                row = {"job": job, "error": f"model build failed: {build['error']}"}
            else:
                row = self._child(["--job", job], job.replace(":", "-"))
            with self.lock:
                self.results["jobs"][job] = row
            self._save()
            print(f"{job}: {'failed: ' + row['error'][:200] if 'qdq' not in row else 'done in %.0f s' % row['wall_s']}", flush=True)

    def run(self, jobs: list[str]) -> int:
        families: dict[str, list[str]] = {}
        for job in jobs:
            families.setdefault(job.split(":")[0], []).append(job)
        threads = [threading.Thread(target=self.chain, args=(name, family_jobs)) for name, family_jobs in families.items()]
        for thread in threads:
            thread.start()
            if not self.args.parallel:
                thread.join()
        for thread in threads:
            thread.join()
        self._save()
        print(markdown(self.results), flush=True)
        return 0 if all("qdq" in row and row.get("check_passed") for row in self.results["jobs"].values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "outputs")))
    parser.add_argument("--work", type=Path, default=Path("/tmp/t2v-qdq"))
    parser.add_argument("--jobs", default=None, help="comma-separated family:format (default: every family x int8, fp8)")
    parser.add_argument("--tiny", action="store_true", help="the tiny models (a dry run of the same code path)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sequential", dest="parallel", action="store_false", help="one family after the other")
    parser.add_argument("--build", default=None, help=argparse.SUPPRESS)  # child process: build one family's model
    parser.add_argument("--job", default=None, help=argparse.SUPPRESS)  # child process: one job
    parser.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    if args.build or args.job:  # a child: do one thing, write its result
        try:
            row = build_model(args.build, args.work, args.tiny, args.device) if args.build else run_job(args.job, args.work, args.tiny, args.device)
        except Exception as exc:
            log.exception("failed")
            row = {"error": f"{type(exc).__name__}: {exc}"[:800]}
        args.result.write_text(json.dumps(row, indent=2, default=str) + "\n")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    jobs = args.jobs.split(",") if args.jobs else default_jobs()
    return Driver(args).run(jobs)


if __name__ == "__main__":
    sys.exit(main())
