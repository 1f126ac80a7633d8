"""``scheduler``: the sampling loop of the ``t2v`` ensemble (``denoising.DenoisingLoop``), one request at a time.

The K/V tensor arrives once per request (from ``conditioning``) and is passed unchanged to every
denoiser call. Before every step the loop asks ``request.is_cancelled()`` and checks the request's
deadline (TIME_LIMIT_S), so a cancelled or overdue request frees this instance at the next step.

**Response cache**: a request with an explicit SEED carries a RESPONSE_KEY (``preprocess``: a digest of
everything its latents depend on). Its denoised latents are kept, on their device, in this instance's
LRU (config parameter ``response_cache_bytes``; 0, the default: off); an identical request later returns them without
a denoising step (the VAE decoder and postprocess still run; the text side is the conditioning cache's).
Every instance keeps its own cache, so a hot request misses at most once per instance. Hits, misses,
entries and bytes are custom metrics (``conditioning_cache.RESPONSE_METRICS``, label ``instance``).
The streaming entry ``t2v_stream`` always denoises: its progress and previews are the steps.
"""

from __future__ import annotations

import torch
import triton_python_backend_utils as pb_utils

from ..conditioning_cache import RESPONSE_BUDGET_METRIC, RESPONSE_METRICS, ConditioningCache
from ..spec import LATENTS, RESPONSE_CACHE_BYTES, RESPONSE_KEY
from .cache_metrics import CacheMetrics
from .common import config_parameter, error_response, model_config
from .tensors import from_torch
from .denoising import DenoisingLoop


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = model_config(args)
        self.loop = DenoisingLoop(args)
        self.input_names = [tensor["name"] for tensor in config["input"]]
        budget = int(config_parameter(config, "response_cache_bytes", str(RESPONSE_CACHE_BYTES)))
        self.responses: ConditioningCache[torch.Tensor] = ConditioningCache(budget, lambda t: t.numel() * t.element_size())
        labels = {"model": args["model_name"], "version": args["model_version"], "instance": args["model_instance_name"]}
        self.metrics = CacheMetrics(labels, budget, RESPONSE_METRICS, RESPONSE_BUDGET_METRIC)

    def execute(self, requests: list) -> list:
        responses = [self._one(request) for request in requests]
        self.metrics.publish(self.responses.stats)
        return responses

    def _one(self, request) -> "pb_utils.InferenceResponse":
        try:
            inputs = {name: pb_utils.get_input_tensor_by_name(request, name) for name in self.input_names}
            key = inputs.pop(RESPONSE_KEY).as_numpy().reshape(-1)[0]
            key = key.decode("utf-8") if isinstance(key, bytes) else str(key)
            cached = self.responses.get(key) if key and self.responses.max_bytes else None
            latents = cached.clone() if cached is not None else None
            if latents is None:
                latents = self.loop.run(inputs, request.is_cancelled)
                if key and self.responses.max_bytes:
                    self.responses.put(key, latents.clone())  # an owned copy: the response's memory goes with it
            return pb_utils.InferenceResponse([from_torch(LATENTS, latents)])
        except Exception as exc:
            return error_response(exc)
