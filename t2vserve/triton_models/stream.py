"""``t2v_stream`` (decoupled): the ``t2v`` ensemble's stages through BLS, with a response after every denoising step.

The stages are ``repository.ENSEMBLE_STEPS``, the one list the ensemble is generated from: every entry
is called through BLS with the same tensor wiring, except ``scheduler``, whose loop
(``denoising.DenoisingLoop``) runs here so that every step can be reported: STEP, TOTAL_STEPS,
ELAPSED_S (since the request arrived), REMAINING_S (mean step time x steps left), STEP_CACHED (the
step reused the previous denoiser output: STEP_CACHE) and, every
PREVIEW_EVERY steps, a PREVIEW frame (``t2vserve.previews``). The last response carries the
ensemble's outputs (VIDEO, MP4, USED_SEED) and the final flag; so does an error.

One instance serves STREAM_CONCURRENCY requests at a time: ``execute`` hands each request (its inputs
copied, its response sender) to a worker thread and returns, as decoupled models may; BLS calls wait
outside the GIL, so the workers' denoiser calls meet in the UNet's dynamic batcher like the
scheduler instances' do. Further requests wait for a free worker.

A cancelled stream (the client stops it or goes away) is found with ``response_sender.is_cancelled()``
before every step and every stage: no further denoiser call is made, the worker takes the next
request, and the request ends with a CANCELLED error. TIME_LIMIT_S is enforced by the same loop.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from ..params import ParameterError, resolve_preview_every
from ..previews import PREVIEW_FILE, LatentPreview
from ..repository import ENSEMBLE_OUTPUTS, ENSEMBLE_STEPS
from ..spec import (
    ELAPSED_S,
    PARAMETERS,
    PREVIEW,
    REMAINING_S,
    STEP,
    STEP_CACHED,
    STREAM_CONCURRENCY,
    STREAM_MODEL,
    STREAM_PARAMETERS,
    TOTAL_STEPS,
)
from .common import RequestCancelled, error_response, infer, version_dir
from .tensors import from_torch
from .denoising import DenoisingLoop

#: The ensemble entry whose work this model does itself (the sampling loop), reporting every step.
LOOP_ENTRY = "scheduler"


def renamed(tensor: "pb_utils.Tensor", name: str) -> "pb_utils.Tensor":
    """``tensor`` under another name, without a copy where DLPack can carry it (not BYTES)."""
    if tensor.name() == name:
        return tensor
    if tensor.is_cpu() and tensor.as_numpy().dtype == np.object_:
        return pb_utils.Tensor(name, tensor.as_numpy())
    return pb_utils.Tensor.from_dlpack(name, tensor.to_dlpack())


class ProgressSender:
    """Sends one progress response per denoising step (and a PREVIEW every ``preview_every`` steps)."""

    def __init__(
        self, sender: "pb_utils.InferenceResponseSender", arrival: float, preview_every: int, preview: LatentPreview | None
    ) -> None:
        self.sender, self.arrival, self.preview_every, self.preview = sender, arrival, preview_every, preview
        self.loop_start = arrival

    def start_loop(self) -> None:
        self.loop_start = time.monotonic()

    def __call__(self, done: int, total: int, latents: torch.Tensor, cached: bool) -> None:
        now = time.monotonic()
        remaining = (now - self.loop_start) / done * (total - done)
        outputs = [
            pb_utils.Tensor(STEP, np.array([done], dtype=np.int32)),
            pb_utils.Tensor(TOTAL_STEPS, np.array([total], dtype=np.int32)),
            pb_utils.Tensor(ELAPSED_S, np.array([now - self.arrival], dtype=np.float32)),
            pb_utils.Tensor(REMAINING_S, np.array([remaining], dtype=np.float32)),
            pb_utils.Tensor(STEP_CACHED, np.array([cached], dtype=np.bool_)),
        ]
        if self.preview is not None and self.preview_every and done % self.preview_every == 0:
            outputs.append(pb_utils.Tensor(PREVIEW, self.preview.frame(latents)))
        self.sender.send(pb_utils.InferenceResponse(outputs))


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        self.loop = DenoisingLoop(args)
        path = version_dir(args) / PREVIEW_FILE
        self.preview = LatentPreview.load(path) if path.exists() else None
        self.workers = ThreadPoolExecutor(STREAM_CONCURRENCY, thread_name_prefix="t2v_stream")

    def execute(self, requests: list) -> None:
        for request in requests:  # the inputs are copied: the worker outlives this call
            inputs = {name: pb_utils.Tensor(name, tensor.as_numpy().copy()) for name, tensor in _present_inputs(request).items()}
            self.workers.submit(self._respond, inputs, request.get_response_sender(), time.monotonic())
        return None

    def finalize(self) -> None:
        """Requests still waiting for a worker are dropped; running ones finish."""
        self.workers.shutdown(wait=True, cancel_futures=True)

    def _respond(self, inputs: dict[str, "pb_utils.Tensor"], sender, arrival: float) -> None:
        """One request, on a worker thread: progress responses, then the final one (the clip or an error)."""
        try:
            response = self._generate(inputs, sender, arrival)
        except Exception as exc:  # every failure ends the stream with an error response; the model keeps serving
            response = error_response(exc)
        try:
            sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception as exc:  # nobody else would see it: a worker thread's exception stays in its future
            pb_utils.Logger.log_error(f"{STREAM_MODEL}: the final response could not be sent: {exc}")

    def _generate(self, inputs: dict[str, "pb_utils.Tensor"], sender, arrival: float) -> "pb_utils.InferenceResponse":
        preview_every = resolve_preview_every(inputs["PREVIEW_EVERY"].as_numpy() if "PREVIEW_EVERY" in inputs else None)
        if preview_every and self.preview is None:
            lacking = f"previews need the model's preview decoder ({PREVIEW_FILE}), which this repository lacks; allowed 0"
            raise ParameterError("PREVIEW_EVERY", lacking)
        progress = ProgressSender(sender, arrival, preview_every, self.preview)
        # ensemble tensor name -> tensor; the request's parameters enter under their own names
        tensors = {p.name: inputs[p.name] for p in PARAMETERS if p.name in inputs}
        for model, input_map, output_map in ENSEMBLE_STEPS:
            if sender.is_cancelled():
                raise RequestCancelled(f"request cancelled by the client before stage '{model}'")
            stage_inputs = {name: tensors[source] for name, source in input_map.items() if source in tensors}
            if model == LOOP_ENTRY:
                progress.start_loop()
                (name,) = output_map
                produced = [from_torch(name, self.loop.run(stage_inputs, sender.is_cancelled, progress))]
            else:
                produced = infer(model, [renamed(tensor, name) for name, tensor in stage_inputs.items()], list(output_map))
            tensors.update({output_map[tensor.name()]: tensor for tensor in produced})
        return pb_utils.InferenceResponse([renamed(tensors[output.name], output.name) for output in ENSEMBLE_OUTPUTS])


def _present_inputs(request) -> dict[str, "pb_utils.Tensor"]:
    """The request's inputs that it carries (all of them are optional to Triton)."""
    names = [p.name for p in PARAMETERS + STREAM_PARAMETERS]
    return {name: t for name in names if (t := pb_utils.get_input_tensor_by_name(request, name)) is not None}
