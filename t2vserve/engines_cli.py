"""The command line of the TensorRT plans (``build/build_engines.py``) and the export step of the compose ``engines`` service.

    python build/build_engines.py                      # build what is missing or stale, skip the rest
    python build/build_engines.py --rebuild            # rebuild every selected slot
    python build/build_engines.py --check              # exit 1 listing stale plans (no build)
    python build/build_engines.py --check -- tritonserver ...   # then exec the command if all are fresh

``--check`` first checks the host (``hostcheck.py``: NVIDIA driver R580+ for the image's CUDA 13, a
non-empty admin key in the command) and exits ``EXIT_HOST`` saying what to fix. The plans' metadata,
staleness and build orchestration are ``engines.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .batcher_delay import current_queue_delay, set_queue_delay
from .deployment import deployed_tracks
from .engines import (
    ONNX_FILE,
    Backend,
    BuilderSettings,
    EngineError,
    Log,
    TensorRTUnavailable,
    _print,
    check_engines,
    ensure_engines,
    geometry_slots,
    load_geometry,
    refusal_message,
    slot_dir,
)
from .families import get_family
from .hostcheck import admin_key_refusal, driver_status, query_driver
from .repository import write_repository
from .geometry import GEOMETRY_FILE

#: Written next to the geometry by the export step of the compose ``engines`` service (what was exported).
EXPORT_SOURCE_FILE = "export_source.json"

EXIT_STALE = 1
EXIT_NO_TENSORRT = 3
EXIT_FAILED = 4
EXIT_HOST = 5  # --check: the host cannot serve (driver too old for the image's CUDA, admin key not set)


# --------------------------------------------------------------------------------------------------
# Export step of the compose ``engines`` service
# --------------------------------------------------------------------------------------------------
def export_source(weights: Path | None) -> dict[str, Any]:
    """Identity of what an export reads: the tiny demo model, or a weights directory (file names, sizes, configs)."""
    if weights is None or not (weights / "model_index.json").exists():
        return {"source": "tiny"}
    digest = hashlib.sha256()
    for path in sorted(p for p in weights.rglob("*") if p.is_file()):
        rel = path.relative_to(weights).as_posix()
        digest.update(f"{rel}\0{path.stat().st_size}\0".encode())
        if path.suffix == ".json":
            digest.update(path.read_bytes())
    return {"source": "weights", "path": str(weights), "fingerprint": digest.hexdigest()}


def export_is_current(repository: Path, source: Mapping[str, Any]) -> bool:
    """Whether ``repository`` holds an export (geometry and every slot's ONNX) of ``source``."""
    marker = Path(repository) / "scheduler" / "1" / EXPORT_SOURCE_FILE
    if not (Path(repository) / "scheduler" / "1" / GEOMETRY_FILE).exists() or not marker.exists():
        return False
    slots = geometry_slots(load_geometry(repository))
    exported = all((slot_dir(repository, slot.name) / ONNX_FILE).exists() for slot in slots)
    return exported and json.loads(marker.read_text()) == dict(source)


def export_if_needed(
    repository: Path, weights: Path | None, preset: str | None, reexport: bool, log: Log = _print
) -> None:
    """Export ``weights`` (a diffusers directory) or, without one, the tiny demo model, unless already exported."""
    source = export_source(weights)
    if export_is_current(repository, source) and not reexport:
        # configs follow this version of the declarations when the export is reused, with the deployment's choices:
        # the tracks it serves (export --tracks) and the denoisers' batcher delay (export or batcher_delay)
        geometry, tracks, delay = load_geometry(repository), deployed_tracks(repository), current_queue_delay(repository)
        write_repository(repository, geometry.family, geometry.experts, get_family(geometry.family).present_components(geometry), tracks)
        if delay is not None:
            set_queue_delay(repository, delay)
        kept = f"tracks {', '.join(tracks) if tracks is not None else 'all'}, batcher delay {delay} us"
        log(f"export of the {source['source']} model already in {repository}: skipped (--reexport redoes it); configs rewritten, kept {kept}")
        return
    args = ["--repository", str(repository)]
    args += ["--weights", str(weights)] if source["source"] == "weights" else ["--tiny"]
    args += ["--preset", preset] if preset else []
    log(f"exporting: python export/export_onnx.py {shlex.join(args)}")
    export = importlib.import_module(f"{__package__}.export")  # torch and diffusers: only when exporting
    if export.main(args) != 0:
        raise EngineError("export failed")
    (Path(repository) / "scheduler" / "1" / EXPORT_SOURCE_FILE).write_text(json.dumps(source, indent=2))




# --------------------------------------------------------------------------------------------------
# Command line (build/build_engines.py)
# --------------------------------------------------------------------------------------------------
def tensorrt_backend() -> Backend:
    """The TensorRT backend, or ``TensorRTUnavailable`` saying why not (no package, only stubs, no GPU)."""
    try:
        from . import tensorrt_builder
    except ImportError as exc:
        raise TensorRTUnavailable(f"TensorRT is not importable here ({exc})") from exc
    return tensorrt_builder


def _slots(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def resolve_slots(repository: Path, requested: Sequence[str] | None) -> list[str]:
    """The requested slots (default: every slot of the exported model), checked against the model's."""
    known = [slot.name for slot in geometry_slots(load_geometry(repository))]
    unknown = [s for s in requested or () if s not in known]
    if unknown:
        raise EngineError(f"unknown slot(s) {', '.join(unknown)}; this model's slots: {','.join(known)}")
    return list(requested or known)


def parser() -> argparse.ArgumentParser:
    from .server import DEFAULT_MODEL_REPOSITORY, REPO_ROOT

    p = argparse.ArgumentParser(description="Build (or --check) the TensorRT plans of the engine slots from their ONNX.")
    p.add_argument("--repository", type=Path, default=DEFAULT_MODEL_REPOSITORY)
    p.add_argument(
        "--slots", type=_slots, default=None, help="comma-separated (default: every slot of the exported model)"
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--rebuild", action="store_true", help="rebuild the selected plans even when up to date")
    mode.add_argument(
        "--check", action="store_true", help="only verify: exit 1 listing stale plans, then exec COMMAND if given"
    )
    p.add_argument(
        "--opt-level",
        type=int,
        default=3,
        choices=range(6),
        metavar="0..5",
        help="builder optimization level (default 3)",
    )
    p.add_argument("--workspace-gb", type=float, default=None, help="workspace memory pool limit (default: TensorRT's)")
    p.add_argument(
        "--timing-cache",
        type=Path,
        default=REPO_ROOT / "build" / "timing.cache",
        help="tactic timing cache, reused across builds",
    )
    p.add_argument(
        "--export-from",
        type=Path,
        default=None,
        metavar="DIR",
        help="first export DIR (a diffusers model; the tiny demo model when DIR has none) unless already exported",
    )
    p.add_argument("--preset", default=None, help="preset of that export (default: tiny / modelscope)")
    p.add_argument("--reexport", action="store_true", help="with --export-from: export even when the repository has it")
    p.add_argument(
        "--tensorrt-info",
        action="store_true",
        help="print the TensorRT of this Python and of the system library Triton loads; exit 1 if they differ",
    )
    p.add_argument(
        "command", nargs=argparse.REMAINDER, help="with --check: '-- COMMAND ...' to exec when every plan is up to date"
    )
    return p


def main(
    argv: Sequence[str] | None = None,
    backend_loader: Callable[[], Backend] = tensorrt_backend,
    exec_command: Callable[[list[str]], None] = lambda cmd: os.execvp(cmd[0], cmd),
    log: Log = _print,
    driver_query: Callable[[], str | None] = query_driver,
) -> int:
    args = parser().parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if command and not args.check:
        parser().error("a command to exec is only accepted with --check")
    if args.tensorrt_info:
        return _tensorrt_info(log)
    if args.check and not _host_ready(command, driver_query, log):
        return EXIT_HOST
    try:
        if args.export_from is not None:
            export_if_needed(args.repository, args.export_from, args.preset, args.reexport, log)
        slots = resolve_slots(args.repository, args.slots)
        if args.check:
            return _check(args.repository, slots, backend_loader, command, exec_command, log)
        settings = BuilderSettings(
            optimization_level=args.opt_level,
            workspace_bytes=int(args.workspace_gb * 2**30) if args.workspace_gb else None,
            timing_cache=str(args.timing_cache) if args.timing_cache else None,
        )
        built = ensure_engines(args.repository, slots, backend_loader(), settings, args.rebuild, log)
        log(f"{len(built)} plan(s) built, {len(slots) - len(built)} up to date")
        return 0
    except TensorRTUnavailable as exc:
        log(
            f"error: {exc}. Build plans on a GPU host with TensorRT (the Docker image: docker compose run --rm engines)"
        )
        return EXIT_NO_TENSORRT
    except EngineError as exc:
        log(f"error: {exc}")
        return EXIT_FAILED


def _host_ready(command: Sequence[str], driver_query: Callable[[], str | None], log: Log) -> bool:
    """The host checks of ``--check`` (hostcheck.py), before TensorRT is even loaded."""
    refusal = admin_key_refusal(command)
    driver_ok, driver_message = driver_status(driver_query())
    log(driver_message)
    if refusal:
        log(refusal)
    return driver_ok and refusal is None


def _check(
    repository: Path,
    slots: Sequence[str],
    backend_loader: Callable[[], Backend],
    command: list[str],
    exec_command: Callable[[list[str]], None],
    log: Log,
) -> int:
    try:
        runtime = backend_loader().runtime_info()
    except TensorRTUnavailable as exc:
        stale = check_engines(repository, slots, None)  # what can be told without TensorRT still counts
        log(
            refusal_message(repository, stale)
            if stale
            else f"cannot verify the TensorRT version and GPU of the plans: {exc}"
        )
        return EXIT_STALE if stale else EXIT_NO_TENSORRT
    stale = check_engines(repository, slots, runtime)
    if stale:
        log(refusal_message(repository, stale))
        return EXIT_STALE
    log(f"{len(slots)} TensorRT plan(s) up to date for TensorRT {runtime.tensorrt_version} on {runtime.describe_gpu()}")
    if command:
        log(f"exec: {shlex.join(command)}")
        exec_command(command)
    return 0


def _tensorrt_info(log: Log) -> int:
    try:
        from . import tensorrt_builder
    except ImportError as exc:
        log(f"TensorRT is not importable here ({exc})")
        return EXIT_NO_TENSORRT
    python_version = tensorrt_builder.tensorrt_version()
    system_version = tensorrt_builder.system_library_version()
    log(f"TensorRT Python package {python_version}; libnvinfer Triton loads: {system_version or 'not found'}")
    if system_version and python_version.split(".")[:3] != system_version.split(".")[:3]:
        log("error: plans built with this Python package would not load in Triton: install the matching tensorrt-cu12")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
