"""``conditioning``: INPUT_IDS [2, seq] -> KV [2, seq, kv_width], each text's K/V from the shared cache or computed.

The interface of the text side for every caller (the ``t2v`` ensemble, ``t2v_stream``): token ids in
(negative prompt row first, as ``preprocess`` makes them), packed K/V out, as ``text_encoder`` +
``kv_projector`` would give. A hit skips both.

* **Per text**: the text encoder and the K/V projector work row by row, so a row's K/V depends on its
  token ids alone. The cache keys on those ids (texts the tokenizer reads the same share an entry), so
  the default negative prompt is one entry for every request; it is pinned (``PINNED_TEXTS_FILE``,
  written by export) and computed once per server, when first needed. The cache serves one model (this
  entry's repository), so the model is implied in the key.
* **Misses** are computed in one BLS call to each engine, padded to CFG_BATCH rows by repeating the last
  one: the batch the engines (and their TensorRT profiles) are built for, and one fixed shape, so a
  text's K/V is the same whether it was computed with a partner, alone, or came from the cache.
* **Device**: entries stay on the device the K/V projector answered on (the GPU with the torch runner or
  TensorRT); the response is assembled there. One instance: the cache lives in its process.
* **Metrics** (``conditioning_cache.METRICS``): hits, misses, evictions, entries, bytes and the budget,
  as Python-backend custom metrics on Triton's metrics endpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from ..conditioning_cache import BUDGET_METRIC, METRICS, ConditioningCache
from ..spec import CFG_BATCH, CONDITIONING_CACHE_BYTES, INPUT_IDS, KV, PINNED_TEXTS_FILE, TEXT_EMBEDS
from .cache_metrics import CacheMetrics
from .common import config_parameter, error_response, infer, model_config, version_dir
from .tensors import from_torch, to_torch


def tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def pinned_keys(path: Path) -> set[bytes]:
    """Cache keys of the token rows in ``path`` ({description: [ids]}); none where export wrote no file."""
    if not path.exists():
        return set()
    return {np.asarray(ids, dtype=np.int64).tobytes() for ids in json.loads(path.read_text()).values()}


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = model_config(args)
        budget = int(config_parameter(config, "cache_bytes", str(CONDITIONING_CACHE_BYTES)))
        self.cache: ConditioningCache[torch.Tensor] = ConditioningCache(budget, tensor_bytes)
        self.pinned = pinned_keys(version_dir(args) / PINNED_TEXTS_FILE)
        self.text_encoder = config_parameter(config, "text_encoder", "text_encoder")
        self.kv_projector = config_parameter(config, "kv_projector", "kv_projector")
        self.metrics = CacheMetrics({"model": args["model_name"], "version": args["model_version"]}, budget, METRICS, BUDGET_METRIC)

    def execute(self, requests: list) -> list:
        responses = [self._one(request) for request in requests]
        self.metrics.publish(self.cache.stats)
        return responses

    def _one(self, request) -> "pb_utils.InferenceResponse":
        try:
            ids = pb_utils.get_input_tensor_by_name(request, INPUT_IDS).as_numpy().astype(np.int64, copy=False)
            rows = {row.tobytes(): row for row in ids}  # one entry per distinct text, in order
            found = {key: self.cache.get(key) for key in rows}
            missing = [key for key, kv in found.items() if kv is None]
            if missing:
                for key, kv in zip(missing, self._compute([rows[key] for key in missing])):
                    self.cache.put(key, kv, pinned=key in self.pinned)
                    found[key] = kv
            return pb_utils.InferenceResponse([from_torch(KV, torch.cat([found[row.tobytes()] for row in ids]))])
        except Exception as exc:
            return error_response(exc)

    def _compute(self, rows: list[np.ndarray]) -> list[torch.Tensor]:
        """K/V [1, seq, kv_width] of each row: one text_encoder and one kv_projector call, CFG_BATCH rows."""
        padded = rows + [rows[-1]] * max(CFG_BATCH - len(rows), 0)
        (embeds,) = infer(self.text_encoder, [pb_utils.Tensor(INPUT_IDS, np.stack(padded))], [TEXT_EMBEDS])
        (kv,) = infer(self.kv_projector, [embeds], [KV])
        packed = to_torch(kv)
        return [packed[i : i + 1].clone() for i in range(len(rows))]  # owned copies: the response's memory goes with it
