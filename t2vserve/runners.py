"""Runners for the engine slots: execute one slot's graph on named torch tensors.

``onnxruntime`` runs ``model.onnx`` on the CPU (the embedded default; a Q/DQ graph as quantize ->
dequantize -> FP32 op). ``torch`` runs the family's torch module for the slot (the module the ONNX
was exported from), loaded from the diffusers directory named in ``source.json``: on CUDA in
bf16/fp16 where a GPU is present (the engine slot filled without TensorRT), else on the CPU in fp32.
On GPU hosts with TensorRT the slots are plans served by Triton's own TensorRT backend, so no runner
is involved there.

Each track runs its own kernels or is not served: the torch runner runs an ``fp8`` slot with FP8
GEMMs (``kernels.fp8``, on CUDA compute capability >= 8.9 or the CPU build), and has no INT8 kernels,
so its repository configs mark ``int8`` slots ``unavailable`` (``UNSERVED``) and ``preprocess`` refuses
PRECISION=int8 there, rather than serving the bf16 module under the int8 name. Every runner says which
kernels it runs (``kernels``), logged at load and read by the benchmarks.
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, TypeVar

import numpy as np
import torch

from .params import ParameterError
from .settings import compile_guards, compiled_batch_sizes_override, torch_compile_mode
from .spec import CFG_BATCH, TIMESTEP

log = logging.getLogger(__name__)


class Runner(Protocol):
    kernels: str  # what executes the slot, e.g. "torch bf16" or "... linear layers FP8 (E4M3 GEMMs, torch._scaled_mm) ..."

    def run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...


class OnnxRuntimeRunner:
    """ONNX Runtime on the CPU over ``<version_dir>/model.onnx``."""

    def __init__(self, version_dir: Path, config: dict[str, Any]) -> None:
        from .onnx_export import onnxruntime_session

        threads = int(config.get("parameters", {}).get("intra_op_threads", {}).get("string_value", "0") or 0)
        self.session = onnxruntime_session(Path(version_dir) / "model.onnx", threads or int(os.environ.get("T2V_ORT_THREADS", "0")))
        self.output_names = [output.name for output in self.session.get_outputs()]
        quantized = any(node.op_type == "QuantizeLinear" for node in _graph_nodes(Path(version_dir) / "model.onnx"))
        self.kernels = "ONNX Runtime CPU, Q/DQ graph (quantize -> dequantize -> FP32 op)" if quantized else "ONNX Runtime CPU, FP32"

    def run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        feeds = {name: tensor.cpu().numpy() for name, tensor in inputs.items()}
        outputs = self.session.run(self.output_names, feeds)
        return {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in zip(self.output_names, outputs)}


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
#: Quantized formats a runner has no kernels for: runner -> {format: why}; those slots are served ``unavailable``.
UNSERVED = {"torch": {"int8": "the torch runner has no INT8 kernels (TensorRT engines and ONNX Runtime's Q/DQ graph serve int8)"}}


def unserved_reason(runner: str, slot: Any) -> str | None:
    """Why ``runner`` does not serve ``slot`` (a quantized format it has no kernels for), or None."""
    return UNSERVED.get(runner, {}).get(slot.quantized_format or "")


class SlotUnavailable(ParameterError):
    """This server's runner cannot run the slot's track: a PRECISION error (INVALID_ARG)."""

    def __init__(self, reason: str) -> None:
        super().__init__("PRECISION", f"this track is not served here: {reason}")


class UnavailableRunner:
    """An entry whose track this runner has no kernels for: loads nothing, refuses every request (config ``reason``)."""

    def __init__(self, version_dir: Path, config: dict[str, Any]) -> None:
        self.reason = config.get("parameters", {}).get("reason", {}).get("string_value", "not served by this runner")
        self.kernels = f"none ({self.reason})"

    def run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise SlotUnavailable(self.reason)


class TorchRunner:
    """The slot's torch module on one device; float inputs are cast in, float outputs are returned as fp32 (the
    decoder's uint8 frames as they are).

    Parameters (config ``parameters``): ``device`` auto|cuda|cpu, ``dtype`` auto|bf16|fp16|fp32 (auto:
    bf16 on CUDA, fp32 on CPU), ``compile`` none|default|max-autotune (torch.compile mode; the UNet
    entries use ``default``: it pays on a compute-bound step, CUDA graphs do not), ``compile_guards`` all|inputs
    (``settings.compile_guards``), ``compiled_batch_sizes``
    (default ``compiled_batch_sizes(max_batch_size, request_batch)``: "2,4,6,8" for CFG pairs, "1,2,4,8" for an
    entry whose track defaults to no guidance (``source.json``'s ``request_batch``, written by export)): one static graph
    each, compiled at warm-up; a batch of another size is padded to the next compiled size.
    An ``fp8`` slot (``unet_fp8``, ``transformer_fp8``) runs its source module with the Linear layers
    swapped for E4M3 GEMMs (``kernels.fp8.convert_to_fp8``, the slot recipe's floating-point layers
    kept); where FP8 GEMMs do not exist (CUDA below compute capability 8.9) it loads nothing and
    refuses requests naming PRECISION. ``kernels`` says what runs.
    """

    def __init__(self, version_dir: Path, config: dict[str, Any]) -> None:
        from .families import get_family

        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        device = params.get("device", "auto")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = params.get("dtype", "auto")
        if dtype == "auto":
            dtype = "bf16" if device == "cuda" else "fp32"
        source = json.loads((Path(version_dir) / SOURCE_FILE).read_text())
        family = get_family(source["family"])
        self.device, self.dtype = torch.device(device), DTYPES[dtype]
        slot = family.slot(source["slot"], int(source.get("experts", 1)))
        self.output_names = [tensor["name"] for tensor in config["output"]]
        self.input_names = [tensor["name"] for tensor in config["input"]]
        self.slot, self.source = slot, source
        self.max_batch = int(config.get("max_batch_size", 0))
        self.unavailable = fp8_unavailable(self.device) if slot.quantized_format == "fp8" else None
        if self.unavailable:  # nothing to load: every request is refused (run)
            self.module = self.forward = None
            self.kernels = f"none ({self.unavailable})"
            return
        components = family.components(Path(source["model_dir"]), self.dtype)
        self.module = slot.module(components).to(self.device).eval()
        self.kernels = f"torch {dtype}"
        if slot.quantized_format == "fp8":
            self.kernels = f"{fp8_module(self.module, str(slot.recipe)).summary()} (E4M3 GEMMs, torch._scaled_mm); everything else torch {dtype}"
        mode = torch_compile_mode(params.get("compile", "none"))
        self.compile_mode, self.guards = mode, compile_guards(params.get("compile_guards", "all"))
        self.forward = self.module if mode == "none" or device == "cpu" else compile_module(self.module, mode, self.guards)
        sizes = compiled_batch_sizes_override(params.get("compiled_batch_sizes", ""))
        self.request_batch = int(source.get("request_batch", CFG_BATCH))
        self.compiled_sizes = tuple(sorted(int(s) for s in sizes.split(",") if s)) or compiled_batch_sizes(self.max_batch, self.request_batch)

    def warm_up(self) -> dict[int, float]:
        """Compile and run the slot at its preset's most frequent shape for every compiled batch size (one
        request's size first), so torch.compile's compiles happen before the entry is READY rather than under load.
        Seconds per batch size. An eager module on CUDA runs them too (lazy CUDA module loading, cuBLAS and
        cuDNN set-up: the first eager request at 256x256x16 took 1.74x the steady clip without it); nothing to
        do for an eager module on the CPU."""
        eager_on_cpu = self.forward is self.module and self.device.type != "cuda"
        if self.module is None or "warmup_values" not in self.source or eager_on_cpu:
            return {}
        values = dict(self.source["warmup_values"])
        first = self.request_batch  # one request's rows: the size the first request needs
        sizes = sorted(self.compiled_sizes, key=lambda size: (size != first, size)) if self.max_batch else [values.get("batch", first)]
        seconds = {}
        for size in sizes:
            start = time.perf_counter()
            self.run(self.slot.example_inputs({**values, "batch": size}, int(self.source.get("vocab_size", 2))))
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seconds[size] = time.perf_counter() - start
        return seconds

    def padded_batch(self, batch: int) -> int:
        """The compiled batch size a batch of ``batch`` runs at: the smallest compiled size that holds it
        (the batcher's other sizes are padded up rather than compiled under load); ``batch`` when eager."""
        if self.forward is self.module or not self.max_batch:
            return batch
        return min((size for size in self.compiled_sizes if size >= batch), default=batch)

    def run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.unavailable or self.forward is None:
            raise SlotUnavailable(str(self.unavailable))
        args = []
        for name in self.input_names:
            tensor = inputs[name].to(self.device, non_blocking=True)
            # activations run in the runner's dtype; timesteps stay fp32 (bf16 would turn 999 into 1000)
            cast = tensor.is_floating_point() and name != TIMESTEP
            args.append(tensor.to(self.dtype) if cast else tensor)
        batch = args[0].shape[0]
        padded = self.padded_batch(batch)
        if padded != batch:  # repeat the last sample: its rows are computed and dropped
            args = [torch.cat([t, t[-1:].expand(padded - batch, *t.shape[1:])]) for t in args]
        with torch.inference_mode():
            try:
                output = self.forward(*args)
            except Exception as exc:  # compilation failed: serve eagerly rather than not at all
                if self.forward is self.module:
                    raise
                log.warning("torch.compile failed (%s); running eagerly", exc)
                self.forward = self.module
                output = self.forward(*args)
        owned = output[:batch] if padded != batch else output
        result = owned.float() if owned.is_floating_point() else owned
        if self.forward is not self.module and result.data_ptr() == output.data_ptr():
            result = result.clone()  # a compiled module's output may be a CUDA graph's buffer, overwritten by its next replay
        return {self.output_names[0]: result}


def compile_module(module: torch.nn.Module, mode: str, guards: str = "all", backend: Any = "inductor") -> Callable[..., Any]:
    """``torch.compile`` of a runner's module: static graphs, one per compiled batch size (``dynamic=False``: the
    UNet3D's forward specialises the batch, diffusers' repeat_interleave, so a graph marked dynamic in it failed to
    compile and ran eagerly). ``guards`` ``inputs``: dynamo skips its guards on the module's own state on every call
    (``settings.compile_guards``); the inputs' guards stay, so each batch size still gets its own graph."""
    if guards == "all":
        return torch.compile(module, mode=mode, dynamic=False, backend=backend)
    from torch._inductor import list_mode_options

    options = {**list_mode_options(mode), "guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe}
    return torch.compile(module, options=options, dynamic=False, backend=backend)  # a mode is given through its options


def compiled_batch_sizes(max_batch: int, request_batch: int = CFG_BATCH) -> tuple[int, ...]:
    """Batch sizes a batched entry compiles, from the rows one request sends (``request_batch``):
    CFG pairs (2): every multiple of 2 up to ``max_batch`` (2, 4, 6, 8 for 8), the sizes the batcher forms,
    none padded, because where a step fills the GPU a padded row costs as much as a real one (H200,
    576x320x24: batch 6 padded to 8 took as long as 8); a guidance-free request there runs padded to the pair.
    Guidance-free entries (1, a distilled student): powers of two and ``max_batch`` (1, 2, 4, 8), the others
    padded up. ``max_batch`` is always compiled."""
    if max_batch <= 0:
        return ()
    if request_batch >= CFG_BATCH and max_batch >= CFG_BATCH:
        return tuple(sorted({*range(CFG_BATCH, max_batch + 1, CFG_BATCH), max_batch}))
    return tuple(sorted({*(2**k for k in range(max_batch.bit_length()) if 2**k <= max_batch), max_batch}))


def fp8_unavailable(device: torch.device) -> str | None:
    """Why ``device`` cannot run the fp8 track's FP8 GEMMs, or None."""
    from .kernels.fp8 import fp8_supported

    if fp8_supported(device):
        return None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    capability = ".".join(map(str, torch.cuda.get_device_capability(device))) if device.type == "cuda" else "-"
    return f"the fp8 track needs FP8 GEMMs (CUDA compute capability >= 8.9); this server's {name} has {capability}"


def fp8_module(module: torch.nn.Module, recipe: str) -> Any:
    """Swap ``module``'s Linear layers for E4M3 GEMMs in place, keeping the recipe's floating-point layers."""
    from .kernels.fp8 import convert_to_fp8
    from .quantize.recipe import Recipe

    report = convert_to_fp8(module, keep=Recipe.load(recipe).keeps)
    log.info("fp8: %s", report.summary())
    return report


def _graph_nodes(path: Path) -> list[Any]:
    import onnx

    return list(onnx.load(str(path), load_external_data=False).graph.node)


#: Marks the server-log line in which each runner entry says what kernels it runs ("<entry>: kernels: ...").
KERNELS_LOG = "kernels: "

#: Written by export into every engine slot's version directory: where the torch runner loads from.
SOURCE_FILE = "source.json"

RUNNERS = {"onnxruntime": OnnxRuntimeRunner, "torch": TorchRunner, "unavailable": UnavailableRunner}


Request = TypeVar("Request")
Response = TypeVar("Response")


def batch_or_each(
    requests: Sequence[Request],
    run_batch: Callable[[Sequence[Request]], list[Response]],
    run_one: Callable[[Request], Response],
    warn: Callable[[str], None] = log.warning,
) -> list[Response]:
    """Run ``requests`` as one batch; if the batch raises, log why (with the traceback) and run each alone.

    One bad request must not fail its batch neighbours, and the batch's failure must not go unseen: a
    fault of the batched path itself would otherwise only show as slower, unbatched serving.
    """
    if len(requests) > 1:
        try:
            return run_batch(requests)
        except Exception as exc:
            trace = "".join(traceback.format_exception(exc)).rstrip()
            warn(f"a batch of {len(requests)} requests failed; retrying them one by one. {trace}")
    return [run_one(request) for request in requests]


def make_runner(kind: str, version_dir: Path, config: dict[str, Any]) -> Runner:
    try:
        return RUNNERS[kind](version_dir, config)
    except KeyError:
        raise ValueError(f"unknown runner {kind!r}; known: {sorted(RUNNERS)}") from None
