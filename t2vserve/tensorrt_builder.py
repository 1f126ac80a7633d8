"""ONNX -> TensorRT plan with the TensorRT 10 Python API. The only module of t2vserve that imports tensorrt.

Decisions (TensorRT 10.5, the TensorRT of NGC Triton 24.10):

* **Network**: ``Builder.create_network(0)``. TensorRT 10 networks are always explicit-batch (the
  ``EXPLICIT_BATCH`` flag is deprecated and ignored). Not ``STRONGLY_TYPED``: our ONNX graphs are FP32,
  and a strongly typed network would run them in FP32; the weakly typed network lets the FP16 builder
  flag pick FP16 kernels while the I/O tensors stay FP32, as the Triton configs declare.
* **FP16 slots**: ``BuilderFlag.FP16``.
* **BF16 slots** (wan22: UMT5 overflows in FP16, and the DiT was trained in BF16): ``BuilderFlag.BF16``
  with FP32 islands: normalization, reduction (the decomposed RMS norms, softmax sums) and the
  elementwise-unary layers (sqrt, exp, sin/cos of RoPE and the time embedding) are constrained to FP32
  (``layer.precision`` and output types, ``BuilderFlag.PREFER_PRECISION_CONSTRAINTS``: TensorRT honours
  them unless no FP32 kernel exists, and says so). **FP32 slots**: no reduced-precision flag.
* **Q/DQ graphs** (explicit quantization, ``t2vserve/quantize/``): the ONNX carries
  QuantizeLinear/DequantizeLinear pairs with their scales, which TensorRT turns into
  IQuantizeLayer/IDequantizeLayer and builds with explicit-quantization rules: the scales are used as
  is, and no calibrator is ever set (no implicit quantization). As NVIDIA's TensorRT 10.5 diffusion
  demo (``demo/Diffusion/diffusion_pipeline.py`` of release/10.5) builds them:
  - **INT8** (``int8``: UNet, FP16 elsewhere; ``int8+bf16``: Wan transformer, BF16 elsewhere): a
    weakly typed network with ``BuilderFlag.INT8`` (required for INT8 Q/DQ in a weakly typed network)
    plus the floating-point flag for the layers without Q/DQ, and the FP32 islands of the BF16 plans
    (norms, reductions, softmax, unary math) constrained with ``PREFER_PRECISION_CONSTRAINTS``.
  - **FP8** (``fp8``): a ``STRONGLY_TYPED`` network and no precision flags: every tensor keeps the
    ONNX's type, the E4M3 Q/DQ pairs make FP8 GEMMs/convolutions and everything else runs in the
    graph's FP32, so FP32 islands hold by construction (a strongly typed network accepts no layer
    precisions). In TensorRT 10.5 ``BuilderFlag.FP8`` only "enables plugins with FP8 input/output"
    (NvInfer.h), and weakly typed FP8 Q/DQ builds were reported not to pick FP8 tactics (TensorRT
    issue #3987, 10.2: "please enable --stronglyTyped"). The non-quantized layers of an FP8 plan
    therefore run in FP32; casting the graph to FP16/BF16 around its FP32 islands first (ModelOpt
    AutoCast) is the follow-up that would speed them up.
* **UINT8 outputs** (the decoder slots' frames, ``video.uint8_frames``): the graph ends in Round and
  Cast(UINT8). TensorRT 10 takes UINT8 only as a network input or output, converting from FP32/FP16 by
  truncation (``DataType.UINT8``; the ONNX parser maps Cast to ``ICastLayer``), hence the explicit Round. In a
  reduced-precision plan the pointwise chain between the decoder's last layer and that Cast (x / 2 + 0.5,
  clip, transpose, x 255, round) is constrained to FP32 (``PREFER_PRECISION_CONSTRAINTS``): FP16 above 128 is
  spaced 0.125 and BF16 1.0, which would move values by a level; in FP32 the rounding is the one
  ``postprocess`` did on the decoder's FP32 output before, and the Cast's input is FP32, as UINT8 needs.
* **Profiles**: one ``IOptimizationProfile`` per entry of ``engines.slot_profiles`` (min/opt/max per
  input); an input of the network without a profile, or a profile for an input the network lacks, is
  an error before anything is built.
* **Timing cache**: loaded from the file when present; one TensorRT rejects (from another GPU or
  TensorRT version, truncated, corrupt, unreadable) is set aside with a warning and an empty one is
  used. Serialized back after the build: later builds and the other slots reuse the measured tactics.
* Builder optimization level and workspace (``MemoryPoolType.WORKSPACE``) come from
  ``engines.BuilderSettings``; an ``IProgressMonitor`` prints the build phases while it runs.
* **Device memory**: after each build the plan is deserialized once and its footprint logged: weights
  (the plan's size) plus the activation memory of one execution context (``device_memory_size_v2``).
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import tensorrt as trt

from .engines import BuildJob, EngineError, Log, RuntimeInfo, TensorRTUnavailable

if not hasattr(trt, "Builder"):  # a namespace package: only type stubs (tensorrt-stubs) are installed
    raise ImportError("the tensorrt package is not installed (only its type stubs are)")

#: CUdevice_attribute values of the CUDA driver API.
_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76


def tensorrt_version() -> str:
    return str(trt.__version__)


def gpu_info(device: int = 0) -> tuple[str, str]:
    """(name, compute capability "major.minor") of CUDA device ``device``, from the CUDA driver (libcuda)."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        raise TensorRTUnavailable(f"no CUDA driver (libcuda.so.1): {exc}; is a GPU visible to this process?") from exc

    def check(result: int, what: str) -> None:
        if result != 0:
            raise TensorRTUnavailable(
                f"CUDA driver call {what} failed with error {result}; is a GPU visible to this process?"
            )

    check(cuda.cuInit(0), "cuInit")
    handle = ctypes.c_int()
    check(cuda.cuDeviceGet(ctypes.byref(handle), device), "cuDeviceGet")
    name = ctypes.create_string_buffer(256)
    check(cuda.cuDeviceGetName(name, len(name), handle), "cuDeviceGetName")
    major, minor = ctypes.c_int(), ctypes.c_int()
    check(
        cuda.cuDeviceGetAttribute(ctypes.byref(major), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, handle),
        "cuDeviceGetAttribute",
    )
    check(
        cuda.cuDeviceGetAttribute(ctypes.byref(minor), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, handle),
        "cuDeviceGetAttribute",
    )
    return name.value.decode(errors="replace"), f"{major.value}.{minor.value}"


def runtime_info() -> RuntimeInfo:
    """The TensorRT version and the GPU (device 0 of this process) that plans are built for and checked against."""
    name, capability = gpu_info()
    return RuntimeInfo(tensorrt_version(), name, capability)


#: Where Triton's tensorrt backend finds libnvinfer: next to the backend, else the system loader's path.
SYSTEM_LIBNVINFER = ("/opt/tritonserver/backends/tensorrt/libnvinfer.so.10", "libnvinfer.so.10")


def system_library_version(candidates: tuple[str, ...] = SYSTEM_LIBNVINFER) -> str | None:
    """Version of the first ``libnvinfer`` of ``candidates`` that loads (Triton's, in the NGC image), None if none.

    Asked in a fresh interpreter without site-packages: this one may hold the pip package's copy already.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for candidate in candidates:
        probe = f"import ctypes; print(ctypes.CDLL({candidate!r}).getInferLibVersion())"
        result = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True, env=env)
        if result.returncode == 0:
            number = int(result.stdout.strip())  # NV_TENSORRT_VERSION: major * 10000 + minor * 100 + patch
            return f"{number // 10000}.{number // 100 % 100}.{number % 100}"
    return None


class ProgressMonitor(trt.IProgressMonitor):
    """Prints the builder's phases (nested) with their step counts; at most one step line per phase every few seconds."""

    def __init__(self, label: str, log: Log, interval_s: float = 5.0) -> None:
        trt.IProgressMonitor.__init__(self)
        self.label, self.log, self.interval_s = label, log, interval_s
        self._lock = threading.Lock()
        self._phases: dict[str, tuple[int, int, float]] = {}  # name -> (depth, steps, start)
        self._last_step_log = 0.0

    def phase_start(self, phase_name: str, parent_phase: str, num_steps: int) -> None:
        with self._lock:
            depth = self._phases[parent_phase][0] + 1 if parent_phase in self._phases else 0
            self._phases[phase_name] = (depth, num_steps, time.monotonic())
            self.log(f"[{self.label}] {'  ' * depth}{phase_name} ({num_steps} steps)")

    def step_complete(self, phase_name: str, step: int) -> bool:
        with self._lock:
            now = time.monotonic()
            if phase_name in self._phases and now - self._last_step_log >= self.interval_s:
                depth, steps, _ = self._phases[phase_name]
                self.log(f"[{self.label}] {'  ' * depth}{phase_name}: {step + 1}/{steps}")
                self._last_step_log = now
        return True  # False would cancel the build

    def phase_finish(self, phase_name: str) -> None:
        with self._lock:
            depth, _, start = self._phases.pop(phase_name, (0, 0, time.monotonic()))
            if depth == 0:
                self.log(f"[{self.label}] {phase_name} done in {time.monotonic() - start:.0f} s")


def _parse(builder: trt.Builder, onnx: Path, logger: trt.ILogger, flags: int = 0) -> tuple[trt.INetworkDefinition, trt.OnnxParser]:
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    # parse_from_file (not parse(bytes)): external weights (model.onnx.data) are found next to the file
    if not parser.parse_from_file(str(onnx)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineError(f"{onnx}: the ONNX parser failed:\n  " + "\n  ".join(errors or ["(no error reported)"]))
    return network, parser


def _check_profiles(network: trt.INetworkDefinition, job: BuildJob) -> None:
    inputs: dict[str, tuple[int, ...]] = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        inputs[tensor.name] = tuple(tensor.shape[axis] for axis in range(len(tensor.shape)))
    for index, profile in enumerate(job.profiles):
        if set(profile) != set(inputs):
            raise EngineError(
                f"{job.slot}: profile {index} covers inputs {sorted(profile)}, the ONNX has {sorted(inputs)}"
            )
        for name, shape in profile.items():
            declared = inputs[name]
            if len(declared) != len(shape.min):
                raise EngineError(
                    f"{job.slot}: {name} has rank {len(declared)} in the ONNX, {len(shape.min)} in profile {index}"
                )
            for axis, size in enumerate(declared):
                if size >= 0 and not shape.min[axis] == shape.max[axis] == size:
                    raise EngineError(
                        f"{job.slot}: {name} axis {axis} is fixed to {size} in the ONNX, profile {index} has {shape}"
                    )


@dataclass(frozen=True)
class PrecisionPlan:
    """How a slot precision (``Slot.precision``) is built: network typing, builder flags, FP32 islands."""

    flags: tuple[trt.BuilderFlag, ...]
    fp32_islands: bool = False  # constrain FP32_LAYER_TYPES to FP32 (PREFER_PRECISION_CONSTRAINTS)
    strongly_typed: bool = False  # the ONNX's types decide; no precision flags, no layer precisions


PRECISION_PLANS: dict[str, PrecisionPlan] = {
    "fp16": PrecisionPlan((trt.BuilderFlag.FP16,)),
    "bf16": PrecisionPlan((trt.BuilderFlag.BF16,), fp32_islands=True),
    "fp32": PrecisionPlan(()),
    "int8": PrecisionPlan((trt.BuilderFlag.FP16, trt.BuilderFlag.INT8), fp32_islands=True),
    "int8+bf16": PrecisionPlan((trt.BuilderFlag.BF16, trt.BuilderFlag.INT8), fp32_islands=True),
    "fp8": PrecisionPlan((), strongly_typed=True),
}
#: Layer types kept in FP32 by plans with FP32 islands (numerically sensitive: norms, sums, transcendental math).
FP32_LAYER_TYPES = (trt.LayerType.NORMALIZATION, trt.LayerType.REDUCE, trt.LayerType.UNARY, trt.LayerType.SOFTMAX)
#: Layer types of the pointwise chain that turns a decoder's frames into a UINT8 output (kept in FP32).
UINT8_TAIL_TYPES = (trt.LayerType.ELEMENTWISE, trt.LayerType.UNARY, trt.LayerType.ACTIVATION, trt.LayerType.SHUFFLE,
                    trt.LayerType.IDENTITY, trt.LayerType.CAST)


def precision_plan(slot: str, precision: str) -> PrecisionPlan:
    if precision not in PRECISION_PLANS:
        raise EngineError(f"{slot}: unknown precision {precision!r}; known: {', '.join(PRECISION_PLANS)}")
    return PRECISION_PLANS[precision]


def network_flags(plan: PrecisionPlan) -> int:
    """``create_network`` flags: strongly typed for FP8 Q/DQ graphs, else 0 (TensorRT 10 networks are explicit-batch)."""
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if plan.strongly_typed else 0


def apply_precision(config: trt.IBuilderConfig, network: trt.INetworkDefinition, slot: str, precision: str, log: Log) -> None:
    """Set ``precision``'s builder flags and FP32 islands on ``config`` / ``network`` (never a calibrator)."""
    plan = precision_plan(slot, precision)
    for flag in plan.flags:
        config.set_flag(flag)
    if plan.fp32_islands:
        islands = _keep_fp32_islands(network)
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
        log(f"{slot}: {precision.upper()} with {islands} layers constrained to FP32 (norms, reductions, unary math)")
    if plan.strongly_typed:
        log(f"{slot}: {precision.upper()} Q/DQ, strongly typed network: layer precisions follow the ONNX's types")
    elif plan.flags:
        tail = _keep_uint8_tails_fp32(network)
        if tail:
            config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
            log(f"{slot}: {tail} layers before the UINT8 output constrained to FP32 (the frames' rounding)")


def _keep_fp32_islands(network: trt.INetworkDefinition) -> int:
    """Constrain the numerically sensitive layers of a reduced-precision network to FP32; returns how many."""
    count = 0
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type in FP32_LAYER_TYPES:
            layer.precision = trt.float32
            for output in range(layer.num_outputs):
                layer.set_output_type(output, trt.float32)
            count += 1
    return count


def _keep_uint8_tails_fp32(network: trt.INetworkDefinition) -> int:
    """Constrain the pointwise chain that feeds each UINT8 network output to FP32; returns how many layers.

    Walks back from the Cast producing the output through single-input layers of ``UINT8_TAIL_TYPES`` (an
    elementwise layer's other input a constant), stopping at the first other layer: the decoder's own.
    """
    outputs = [network.get_output(index) for index in range(network.num_outputs)]
    uint8_outputs = [tensor for tensor in outputs if tensor.dtype == trt.uint8]
    if not uint8_outputs:
        return 0
    producers: dict[str, trt.ILayer] = {}
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        for output in range(layer.num_outputs):
            producers[layer.get_output(output).name] = layer
    count = 0
    for tensor in uint8_outputs:
        cast = producers.get(tensor.name)
        feeding = cast.get_input(0) if cast is not None else None
        while feeding is not None and (step := producers.get(feeding.name)) is not None and step.type in UINT8_TAIL_TYPES:
            inputs = [step.get_input(i) for i in range(step.num_inputs)]
            variable = [t for t in inputs if t is not None and (t.name not in producers or producers[t.name].type != trt.LayerType.CONSTANT)]
            if len(variable) != 1:
                break
            step.precision = trt.float32
            for output in range(step.num_outputs):
                step.set_output_type(output, trt.float32)
            count += 1
            feeding = variable[0]
    return count


def _timing_cache(config: trt.IBuilderConfig, path: Path | None, log: Log) -> trt.ITimingCache:
    """The builder's timing cache: ``path``'s when TensorRT accepts it, else an empty one (rebuilt, never fatal)."""
    try:
        blob = path.read_bytes() if path is not None and path.exists() else b""
        cache = config.create_timing_cache(blob)
    except Exception as exc:  # unreadable, truncated or corrupt: TensorRT may refuse to deserialize it at all
        blob = b""
        log(f"timing cache {path} is unreadable ({exc})")
        cache = None
    if cache is None or not config.set_timing_cache(cache, False):
        log(f"timing cache {path} rejected (corrupt, or from another GPU or TensorRT version): starting an empty one")
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
    elif blob:
        log(f"timing cache: reusing {path} ({len(blob) / 1e3:.0f} kB)")
    return cache


def build_plan(job: BuildJob, log: Log) -> None:
    """Build ``job.plan`` from ``job.onnx``; raises ``EngineError`` with the parser's or builder's reason."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = network_flags(precision_plan(job.slot, job.precision))
    network, _parser = _parse(builder, job.onnx, logger, flags)  # the parser owns weights the network refers to
    _check_profiles(network, job)

    config = builder.create_builder_config()
    apply_precision(config, network, job.slot, job.precision, log)  # Q/DQ: explicit quantization, no calibrator
    config.builder_optimization_level = job.settings.optimization_level
    if job.settings.workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, job.settings.workspace_bytes)
    for profile_shapes in job.profiles:
        profile = builder.create_optimization_profile()
        for name, shape in profile_shapes.items():
            profile.set_shape(name, trt.Dims(list(shape.min)), trt.Dims(list(shape.opt)), trt.Dims(list(shape.max)))
        config.add_optimization_profile(profile)
    cache_path = Path(job.settings.timing_cache) if job.settings.timing_cache else None
    timing_cache = _timing_cache(
        config, cache_path, log
    )  # referenced until the build is done (config holds a raw pointer)
    monitor = ProgressMonitor(job.slot, log)  # same: must outlive the build
    config.progress_monitor = monitor

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"{job.slot}: TensorRT could not build {job.onnx} (see the TensorRT errors above)")
    tmp = job.plan.with_name(job.plan.name + ".tmp")
    tmp.write_bytes(serialized)
    os.replace(tmp, job.plan)
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        cache_path.write_bytes(timing_cache.serialize())  # the builder added this build's tactic timings to it
    log_device_memory(job.slot, trt.Runtime(logger), serialized, log)


MIB = 2**20


def log_device_memory(slot: str, runtime: trt.Runtime, plan: trt.IHostMemory | bytes, log: Log) -> None:
    """Log what the plan will hold on the GPU: its weights (the plan's size) and an execution context's
    activation memory (``device_memory_size_v2``: the largest over its profiles). Never fatal: the plan is written.
    """
    size = memoryview(plan).nbytes
    try:
        engine = runtime.deserialize_cuda_engine(plan)
    except Exception as exc:
        engine, reason = None, str(exc)
    else:
        reason = "see the TensorRT errors above"
    if engine is None:
        log(f"{slot}: plan {size / MIB:.1f} MiB; device memory unknown (the plan did not deserialize: {reason})")
        return
    activations = int(engine.device_memory_size_v2)  # the V2 APIs: TensorRT 10.1+
    per_profile = [engine.get_device_memory_size_for_profile_v2(i) for i in range(engine.num_optimization_profiles)]
    log(
        f"{slot}: device memory {(size + activations) / MIB:.1f} MiB = weights {size / MIB:.1f} MiB (plan) "
        f"+ activations {activations / MIB:.1f} MiB per execution context "
        f"(profiles: {', '.join(f'{b / MIB:.1f}' for b in per_profile)} MiB)"
    )
