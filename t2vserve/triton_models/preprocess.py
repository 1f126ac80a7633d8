"""``preprocess``: validate and default the request parameters, filter the prompt, tokenize prompt and negative prompt.

It also writes RESPONSE_KEY (the response cache's key of a request with an explicit SEED, empty otherwise)
and starts the request's clock: DEADLINE is its arrival time plus TIME_LIMIT_S (default and
maximum: the config parameter ``max_time_limit_s``), checked by the denoising loop at every step.
Config parameters: ``safety_filter`` (the prompt filter's file, ``t2vserve.safety.find_filter_file``),
``safety_filter_enabled`` (``false``: no filter, for research deployments) and ``tracks`` (the
PRECISION tracks this server's runner serves, set in ``configs/<runner>.pbtxt``; absent: all).
"""

from __future__ import annotations

import time

import numpy as np
import triton_python_backend_utils as pb_utils

from ..families import get_family
from ..params import resolve, tokenize_pair
from ..safety import configured_filter
from ..geometry import GEOMETRY_FILE, ModelGeometry
from ..spec import (
    DEADLINE,
    INPUT_IDS,
    MAX_TIME_LIMIT_S,
    NUMPY_DTYPES,
    PARAMETERS,
    RESOLVED_PARAMETERS,
    RESPONSE_KEY,
    SAFETY_FILTER_FILE,
    USED_SEED,
)
from .common import config_parameter, error_response, model_config, optional_input, version_dir


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        directory = version_dir(args)
        self.geometry = ModelGeometry.load(directory / GEOMETRY_FILE)
        family = get_family(self.geometry.family)
        self.clean = family.clean_prompt
        self.tokenizer = family.load_tokenizer(directory / "tokenizer")
        config = model_config(args)
        served = config_parameter(config, "tracks", "")  # the runner's tracks (configs/<runner>.pbtxt), else all
        if served:
            self.geometry = self.geometry.served(served.split(","))
        self.max_time_limit_s = float(config_parameter(config, "max_time_limit_s", str(MAX_TIME_LIMIT_S)))
        self.prompt_filter = configured_filter(
            config_parameter(config, "safety_filter", SAFETY_FILTER_FILE), config_parameter(config, "safety_filter_enabled", "true"), directory
        )

    def execute(self, requests: list) -> list:
        return [self._one(request) for request in requests]

    def _one(self, request) -> "pb_utils.InferenceResponse":
        try:
            arrival = time.time()
            raw = {p.name: optional_input(request, p.name) for p in PARAMETERS}
            resolved = resolve({k: v for k, v in raw.items() if v is not None}, self.geometry, self.max_time_limit_s)
            if self.prompt_filter is not None:
                self.prompt_filter.check(resolved.prompt)
            ids = tokenize_pair(self.tokenizer, resolved.prompt, resolved.negative_prompt, self.geometry.text_max_length, self.clean)
            outputs = [
                pb_utils.Tensor(INPUT_IDS, ids),
                pb_utils.Tensor(DEADLINE, np.array([arrival + resolved.time_limit_s])),
                pb_utils.Tensor(RESPONSE_KEY, np.array([resolved.response_key().encode("utf-8")], dtype=np.object_)),
            ]
            for name, value in resolved.resolved().items():
                value = value.encode("utf-8") if isinstance(value, str) else value
                outputs.append(pb_utils.Tensor(f"RESOLVED_{name}", np.array([value], dtype=NUMPY_DTYPES[RESOLVED_PARAMETERS[name]])))
            outputs.append(pb_utils.Tensor(USED_SEED, np.array([resolved.seed], dtype=np.int64)))  # the ensemble's answer
            return pb_utils.InferenceResponse(outputs)
        except Exception as exc:  # every failure becomes an error response; the model keeps serving
            return error_response(exc)
