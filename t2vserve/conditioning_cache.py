"""The shared conditioning cache: one text's packed K/V, kept where it was computed, LRU-bounded by bytes.

The same LRU keeps the ``scheduler``'s response cache (a request's denoised latents, ``RESPONSE_METRICS``).

Pure Python (no Triton): the ``conditioning`` entry (``triton_models/conditioning.py``) owns one
instance per served model and reports ``CacheStats`` as Prometheus metrics. Keys are whatever the
caller chooses (there: a text's token ids, which are all its K/V depends on). Pinned entries (the
default negative prompt) are never evicted but count against the budget like the others.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Generic, Hashable, TypeVar

Value = TypeVar("Value")


@dataclass
class CacheStats:
    """Counters since the cache was created, and its current size."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    entries: int = 0
    bytes: int = 0


class ConditioningCache(Generic[Value]):
    """LRU over ``max_bytes``; ``size_of`` gives an entry's bytes (torch: ``numel() * element_size()``).

    An entry larger than what eviction can free (the budget less the pinned entries) is not kept;
    ``max_bytes`` 0 keeps nothing (every lookup misses).
    """

    def __init__(self, max_bytes: int, size_of: Callable[[Value], int]) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes, self.size_of = max_bytes, size_of
        self._entries: OrderedDict[Hashable, tuple[Value, int]] = OrderedDict()
        self._pinned: set[Hashable] = set()
        self.stats = CacheStats()

    def get(self, key: Hashable) -> Value | None:
        """The entry (now the most recently used), or None; counted as a hit or a miss."""
        found = self._entries.get(key)
        if found is None:
            self.stats.misses += 1
            return None
        self._entries.move_to_end(key)
        self.stats.hits += 1
        return found[0]

    def put(self, key: Hashable, value: Value, pinned: bool = False) -> bool:
        """Keep ``value`` under ``key``, evicting least recently used unpinned entries; False if it does not fit."""
        size = self.size_of(value)
        self._drop(key)
        pinned_bytes = sum(self._entries[k][1] for k in self._pinned)
        if pinned_bytes + size > self.max_bytes:
            return False
        while self.stats.bytes + size > self.max_bytes:
            victim = next(k for k in self._entries if k not in self._pinned)
            self._drop(victim)
            self.stats.evictions += 1
        self._entries[key] = (value, size)
        if pinned:
            self._pinned.add(key)
        self._resize(size, 1)
        return True

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def is_pinned(self, key: Hashable) -> bool:
        return key in self._pinned

    def _drop(self, key: Hashable) -> None:
        found = self._entries.pop(key, None)
        if found is not None:
            self._pinned.discard(key)
            self._resize(-found[1], -1)

    def _resize(self, size: int, count: int) -> None:
        self.stats.bytes += size
        self.stats.entries += count


#: Prometheus metric of each ``CacheStats`` field, as the ``conditioning`` entry reports it on
#: Triton's metrics endpoint: field -> (metric name, counter | gauge, help).
METRICS: dict[str, tuple[str, str, str]] = {
    "hits": ("t2v_conditioning_cache_hits_total", "counter", "Texts (prompt or negative prompt) whose K/V came from the cache"),
    "misses": ("t2v_conditioning_cache_misses_total", "counter", "Texts whose K/V was computed (text encoder + K/V projector)"),
    "evictions": ("t2v_conditioning_cache_evictions_total", "counter", "Entries evicted to stay within the byte budget"),
    "entries": ("t2v_conditioning_cache_entries", "gauge", "Texts whose K/V the cache holds"),
    "bytes": ("t2v_conditioning_cache_bytes", "gauge", "Bytes of K/V the cache holds (on the device it was computed on)"),
}
BUDGET_METRIC = ("t2v_conditioning_cache_budget_bytes", "gauge", "The cache's byte budget (config parameter cache_bytes)")

#: The same for each ``scheduler`` instance's response cache (denoised latents of requests with an explicit SEED),
#: with the label ``instance`` besides model and version: every instance keeps its own cache.
RESPONSE_METRICS: dict[str, tuple[str, str, str]] = {
    "hits": ("t2v_response_cache_hits_total", "counter", "Requests answered from the response cache (no denoising step ran)"),
    "misses": ("t2v_response_cache_misses_total", "counter", "Requests with an explicit SEED that were denoised (then kept)"),
    "evictions": ("t2v_response_cache_evictions_total", "counter", "Entries evicted to stay within the byte budget"),
    "entries": ("t2v_response_cache_entries", "gauge", "Requests whose denoised latents the cache holds"),
    "bytes": ("t2v_response_cache_bytes", "gauge", "Bytes of denoised latents the cache holds (on the denoiser's device)"),
}
RESPONSE_BUDGET_METRIC = ("t2v_response_cache_budget_bytes", "gauge", "The cache's byte budget (config parameter response_cache_bytes)")
