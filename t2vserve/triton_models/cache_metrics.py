"""A cache's ``CacheStats`` as Python-backend custom metrics on Triton's metrics endpoint.

Used by ``conditioning`` (the shared K/V cache) and ``scheduler`` (each instance's response cache): the
metric names come from ``conditioning_cache.METRICS`` / ``RESPONSE_METRICS``.
"""

from __future__ import annotations

import triton_python_backend_utils as pb_utils

from ..conditioning_cache import CacheStats


class CacheMetrics:
    """Counters advance by what changed since the last publish; gauges are set."""

    def __init__(self, labels: dict[str, str], budget: int, metrics: dict[str, tuple[str, str, str]], budget_metric: tuple[str, str, str]) -> None:
        kinds = {"counter": pb_utils.MetricFamily.COUNTER, "gauge": pb_utils.MetricFamily.GAUGE}
        self.definitions = metrics
        # the families must outlive their metrics: keep both
        self.families = {
            field: pb_utils.MetricFamily(name=name, description=text, kind=kinds[kind]) for field, (name, kind, text) in metrics.items()
        }
        self.metrics = {field: family.Metric(labels=labels) for field, family in self.families.items()}
        name, _, text = budget_metric
        self.budget_family = pb_utils.MetricFamily(name=name, description=text, kind=pb_utils.MetricFamily.GAUGE)
        self.budget = self.budget_family.Metric(labels=labels)
        self.budget.set(budget)
        self.published = CacheStats()

    def publish(self, stats: CacheStats) -> None:
        for field, (_, kind, _) in self.definitions.items():
            value = getattr(stats, field)
            if kind == "gauge":
                self.metrics[field].set(value)
            elif value > getattr(self.published, field):
                self.metrics[field].increment(value - getattr(self.published, field))
        self.published = CacheStats(**vars(stats))
