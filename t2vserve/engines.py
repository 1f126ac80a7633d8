"""TensorRT plans of the engine slots: optimization profiles, plan metadata, staleness, build orchestration.

Pure Python: nothing here imports ``tensorrt``. The TensorRT calls live in ``tensorrt_builder.py``
(the only module that imports it) and reach this module through the small ``Backend`` protocol, so
profile derivation, metadata checks and the stale-plan refusal run (and are tested) without a GPU.

Each plan ``<repository>/<slot>/1/model.plan`` has ``model.plan.json`` next to it (``EngineMetadata``):
TensorRT version, GPU name and compute capability, optimization profiles, precision, builder settings
and the sha256 of the ONNX file (plus its external data) it was built from. A plan whose metadata does
not match the running TensorRT, the GPU, its ONNX or the profiles spec implies is stale: the build
rebuilds it, and the server's start (``--check``) refuses to serve it, saying how to rebuild. The command
line (``build/build_engines.py``) is ``engines_cli.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Protocol, Sequence

from .families import get_family
from .families.base import Extent, Slot
from .geometry import GEOMETRY_FILE, ModelGeometry

PLAN_FILE = "model.plan"
METADATA_FILE = "model.plan.json"
ONNX_FILE = "model.onnx"
METADATA_FORMAT = 1


REBUILD_COMMAND = "python build/build_engines.py --rebuild"
COMPOSE_REBUILD_COMMAND = "docker compose run --rm engines --rebuild"

#: NGC Triton release -> the TensorRT its tensorrt backend loads plans with (the pip package to build them).
NGC_TENSORRT = {"24.10": "10.5.0"}


Log = Callable[[str], None]


def _print(message: str) -> None:
    print(message, flush=True)


# --------------------------------------------------------------------------------------------------
# Optimization profiles
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShapeRange:
    """min/opt/max shape of one network input in one optimization profile."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def __post_init__(self) -> None:
        if not len(self.min) == len(self.opt) == len(self.max):
            raise ValueError(f"min/opt/max ranks differ: {self.min} {self.opt} {self.max}")
        if not all(lo <= mid <= hi for lo, mid, hi in zip(self.min, self.opt, self.max)):
            raise ValueError(f"need min <= opt <= max per dimension: {self.min} {self.opt} {self.max}")

    def to_json(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_json(cls, data: Mapping[str, Sequence[int]]) -> ShapeRange:
        return cls(tuple(data["min"]), tuple(data["opt"]), tuple(data["max"]))


#: Input name -> shape range: one TensorRT optimization profile.
Profile = dict[str, ShapeRange]


Dim = Extent | int


def slot_input_dims(slot: Slot, geometry: ModelGeometry) -> dict[str, tuple[Dim, ...]]:
    """ONNX input name -> dimensions (an ``Extent`` where dynamic, an int where fixed), from the slot declaration."""
    family = get_family(geometry.family)
    values: dict[str, Dim] = {**family.constants(geometry), **family.extents(geometry)}
    return {t.name: tuple(d if isinstance(d, int) else values[d] for d in t.dims) for t in slot.inputs}


def _shape_range(dims: tuple[Dim, ...]) -> ShapeRange:
    pick: Callable[[Dim, str], int] = lambda d, key: getattr(d, key) if isinstance(d, Extent) else d
    return ShapeRange(*(tuple(pick(d, key) for d in dims) for key in ("min", "opt", "max")))


def geometry_slots(geometry: ModelGeometry) -> tuple[Slot, ...]:
    """The engine slots of the model a repository serves."""
    return get_family(geometry.family).slots_of(geometry)


def find_slot(name: str, geometry: ModelGeometry) -> Slot:
    for slot in geometry_slots(geometry):
        if slot.name == name:
            return slot
    raise KeyError(f"unknown engine slot {name!r}; slots: {', '.join(s.name for s in geometry_slots(geometry))}")


def slot_profiles(slot: str, geometry: ModelGeometry) -> tuple[Profile, ...]:
    """The optimization profiles of ``slot``'s plan (one profile covering the preset's whole range)."""
    dims = slot_input_dims(find_slot(slot, geometry), geometry)
    return ({name: _shape_range(d) for name, d in dims.items()},)


def profiles_to_json(profiles: Sequence[Profile]) -> list[dict[str, dict[str, list[int]]]]:
    return [{name: shape.to_json() for name, shape in profile.items()} for profile in profiles]


def profiles_from_json(data: Sequence[Mapping[str, Mapping[str, Sequence[int]]]]) -> tuple[Profile, ...]:
    return tuple({name: ShapeRange.from_json(shape) for name, shape in profile.items()} for profile in data)


# --------------------------------------------------------------------------------------------------
# Plan metadata
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RuntimeInfo:
    """What a plan is tied to: the TensorRT library and the GPU model that build and run it."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "9.0"

    @property
    def sm(self) -> str:
        return "sm_" + self.compute_capability.replace(".", "")

    def describe_gpu(self) -> str:
        return f"{self.gpu_name} {self.sm}"


@dataclass(frozen=True)
class BuilderSettings:
    """Builder knobs: recorded in the metadata, not part of staleness (rebuild with --rebuild to change)."""

    optimization_level: int = 3  # TensorRT's default; 0..5, higher searches longer
    workspace_bytes: int | None = None  # None: TensorRT's default (the device's memory)
    timing_cache: str | None = None  # file the tactic timings are loaded from and saved to


@dataclass(frozen=True)
class EngineMetadata:
    """Contents of ``model.plan.json``."""

    slot: str
    precision: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    profiles: tuple[Profile, ...]
    onnx_sha256: str
    onnx_files: tuple[str, ...]
    plan_bytes: int
    builder: BuilderSettings = field(default_factory=BuilderSettings)
    built_at: str = ""
    format: int = METADATA_FORMAT

    @property
    def runtime(self) -> RuntimeInfo:
        return RuntimeInfo(self.tensorrt_version, self.gpu_name, self.compute_capability)

    def to_json(self) -> str:
        data = asdict(self)
        data["profiles"] = profiles_to_json(self.profiles)
        data["onnx_files"] = list(self.onnx_files)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> EngineMetadata:
        data = json.loads(text)
        if data.get("format") != METADATA_FORMAT:
            raise ValueError(f"metadata format {data.get('format')!r}, expected {METADATA_FORMAT}")
        data["profiles"] = profiles_from_json(data["profiles"])
        data["onnx_files"] = tuple(data["onnx_files"])
        data["builder"] = BuilderSettings(**data["builder"])
        return cls(**data)

    def write(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json())
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: Path) -> EngineMetadata:
        return cls.from_json(Path(path).read_text())


def onnx_files(onnx: Path) -> list[Path]:
    """The ONNX file and its external weights (``model.onnx.data``, written by export for graphs > 2 GB)."""
    data = onnx.with_name(onnx.name + ".data")
    return [onnx] + ([data] if data.exists() else [])


def onnx_digest(onnx: Path) -> str:
    """sha256 over the ONNX file and its external data (names and sizes included)."""
    digest = hashlib.sha256()
    for path in onnx_files(onnx):
        digest.update(f"{path.name}\0{path.stat().st_size}\0".encode())
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------
# Staleness
# --------------------------------------------------------------------------------------------------
def slot_dir(repository: Path, slot: str) -> Path:
    return Path(repository) / slot / "1"


def load_geometry(repository: Path) -> ModelGeometry:
    path = Path(repository) / "scheduler" / "1" / GEOMETRY_FILE
    if not path.exists():
        raise EngineError(
            f"{path} is missing: export the model first (python export/export_onnx.py --tiny, or --weights DIR)"
        )
    return ModelGeometry.load(path)


class EngineError(RuntimeError):
    """A build or check that cannot proceed, with a message meant for the user."""


def _describe_profile_change(built: Sequence[Profile], wanted: Sequence[Profile]) -> str:
    if len(built) != len(wanted):
        return f"{len(built)} profiles, spec implies {len(wanted)}"
    for old, new in zip(built, wanted):
        for name in sorted(set(old) | set(new)):
            if name not in new:
                return f"input {name} no longer exists"
            if name not in old:
                return f"new input {name}"
            if old[name] != new[name]:
                for key in ("min", "opt", "max"):
                    before, after = getattr(old[name], key), getattr(new[name], key)
                    if before != after:
                        return f"{name} {key} {list(before)} -> {list(after)}"
    return "profiles differ"


def stale_reasons(repository: Path, slot: str, geometry: ModelGeometry, runtime: RuntimeInfo | None) -> list[str]:
    """Why ``slot``'s plan cannot be served as is (empty: up to date).

    ``runtime`` None: the TensorRT version and GPU are unknown (TensorRT not importable here); every
    other check still runs.
    """
    directory = slot_dir(repository, slot)
    plan, meta_path, onnx = directory / PLAN_FILE, directory / METADATA_FILE, directory / ONNX_FILE
    if not plan.exists():
        return [f"missing ({plan} not built)"]
    if not meta_path.exists():
        return [f"missing metadata ({meta_path}): plan of unknown origin"]
    try:
        meta = EngineMetadata.read(meta_path)
    except (ValueError, KeyError, TypeError) as exc:
        return [f"unreadable metadata ({meta_path}: {exc})"]
    reasons = []
    if plan.stat().st_size != meta.plan_bytes:
        reasons.append(
            f"{plan} is {plan.stat().st_size} bytes, its metadata says {meta.plan_bytes} (replaced or truncated)"
        )
    if runtime is not None:
        if meta.tensorrt_version != runtime.tensorrt_version:
            reasons.append(f"built for TensorRT {meta.tensorrt_version}, running {runtime.tensorrt_version}")
        built_gpu = meta.runtime
        if (built_gpu.gpu_name, built_gpu.compute_capability) != (runtime.gpu_name, runtime.compute_capability):
            reasons.append(f"built for GPU {built_gpu.describe_gpu()}, this is {runtime.describe_gpu()}")
    if not onnx.exists():
        reasons.append(f"ONNX missing ({onnx}): export first")
    else:
        digest = onnx_digest(onnx)
        if digest != meta.onnx_sha256:
            reasons.append(f"ONNX changed (hash {meta.onnx_sha256[:12]} -> {digest[:12]})")
    precision = find_slot(slot, geometry).precision
    if meta.precision != precision:
        reasons.append(f"precision changed ({meta.precision} -> {precision})")
    wanted = slot_profiles(slot, geometry)
    if meta.profiles != wanted:
        reasons.append(f"optimization profiles changed ({_describe_profile_change(meta.profiles, wanted)})")
    return reasons


def check_engines(
    repository: Path, slots: Sequence[str], runtime: RuntimeInfo | None, geometry: ModelGeometry | None = None
) -> dict[str, list[str]]:
    """Stale slots and their reasons (empty dict: every plan can be served)."""
    geometry = geometry or load_geometry(repository)
    stale = {slot: stale_reasons(repository, slot, geometry, runtime) for slot in slots}
    return {slot: reasons for slot, reasons in stale.items() if reasons}


def refusal_message(repository: Path, stale: Mapping[str, Sequence[str]]) -> str:
    """What the server start prints when it refuses stale plans: each plan, why, and how to rebuild."""
    lines = [f"refusing to serve stale TensorRT plans in {repository}:"]
    lines += [f"  {slot}: {'; '.join(reasons)}" for slot, reasons in stale.items()]
    lines.append(f"rebuild them: {REBUILD_COMMAND} --repository {repository}")
    lines.append(f"  (docker compose: {COMPOSE_REBUILD_COMMAND})")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildJob:
    """One plan to build: what ``Backend.build_plan`` receives."""

    slot: str
    onnx: Path
    plan: Path
    precision: str
    profiles: tuple[Profile, ...]
    settings: BuilderSettings


class Backend(Protocol):
    """What the build needs from TensorRT (``tensorrt_builder`` is the real one)."""

    def runtime_info(self) -> RuntimeInfo: ...

    def build_plan(self, job: BuildJob, log: Log) -> None: ...


def ensure_engines(
    repository: Path,
    slots: Sequence[str],
    backend: Backend,
    settings: BuilderSettings = BuilderSettings(),
    rebuild: bool = False,
    log: Log = _print,
) -> list[str]:
    """Build the plans of ``slots`` that are missing or stale (all of them with ``rebuild``); return those built.

    Up-to-date plans are skipped with a log line. The metadata is removed before a build and written
    after it, so an interrupted build never leaves a plan that looks up to date.
    """
    geometry = load_geometry(repository)
    runtime = backend.runtime_info()
    log(f"TensorRT {runtime.tensorrt_version} on {runtime.describe_gpu()}; {repository} (preset {geometry.preset})")
    built = []
    for slot in slots:
        reasons = stale_reasons(repository, slot, geometry, runtime)
        directory = slot_dir(repository, slot)
        if not reasons and not rebuild:
            log(f"{slot}: up to date ({directory / PLAN_FILE}), skipping")
            continue
        onnx = directory / ONNX_FILE
        if not onnx.exists():
            raise EngineError(f"{slot}: {onnx} is missing: export the model first (python export/export_onnx.py)")
        log(f"{slot}: building ({'; '.join(reasons) if reasons else 'rebuild requested'})")
        (directory / METADATA_FILE).unlink(missing_ok=True)
        digest = onnx_digest(onnx)  # of what the build reads, taken before it starts
        precision = find_slot(slot, geometry).precision
        job = BuildJob(slot, onnx, directory / PLAN_FILE, precision, slot_profiles(slot, geometry), settings)
        start = time.monotonic()
        backend.build_plan(job, log)
        metadata = EngineMetadata(
            slot=slot,
            precision=job.precision,
            tensorrt_version=runtime.tensorrt_version,
            gpu_name=runtime.gpu_name,
            compute_capability=runtime.compute_capability,
            profiles=job.profiles,
            onnx_sha256=digest,
            onnx_files=tuple(path.name for path in onnx_files(onnx)),
            plan_bytes=job.plan.stat().st_size,
            builder=settings,
            built_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
        metadata.write(directory / METADATA_FILE)
        log(f"{slot}: built {job.plan} ({metadata.plan_bytes / 1e6:.1f} MB) in {time.monotonic() - start:.0f} s")
        built.append(slot)
    return built


class TensorRTUnavailable(RuntimeError):
    """TensorRT cannot build or verify plans here (no package, only its stubs, no GPU)."""
