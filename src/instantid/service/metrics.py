"""Prometheus metrics: queue depth and jobs by state (read from the job store at scrape time, so every server
in front of one Redis reports the same numbers), generation time, face-analysis failures, finished jobs.

Each app or worker gets its own registry (tests start several in one process). Workers on other machines
expose theirs with ``instantid worker --metrics-port``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from instantid.service.jobs import JobStore

# Seconds: a tiny demo job takes well under one, an SDXL job on a GPU 5-30, on a CPU many minutes.
GENERATION_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)


class _StoreCollector:
    def __init__(self, store: JobStore) -> None:
        self.store = store

    def describe(self) -> list[Any]:
        return []  # collected at scrape time only (no store read when the collector is registered)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = self.store.counts()
        yield GaugeMetricFamily("instantid_queue_depth", "Jobs waiting for a worker.", value=counts["queued"])
        by_state = GaugeMetricFamily("instantid_jobs", "Jobs kept by the store, by state.", labels=["state"])
        for state, count in counts.items():
            by_state.add_metric([state], count)
        yield by_state


class ServiceMetrics:
    """The service's metrics in their own registry; ``store`` adds the queue gauges."""

    def __init__(self, store: JobStore | None = None) -> None:
        self.registry = CollectorRegistry()
        self.generation_seconds = Histogram(
            "instantid_generation_seconds", "Time to generate one job's images (face analysis excluded).",
            buckets=GENERATION_BUCKETS, registry=self.registry)
        self.face_failures = Counter(
            "instantid_face_analysis_failures", "Photos refused by face analysis (no face, unreadable).",
            ["stage"], registry=self.registry)
        self.jobs_finished = Counter(
            "instantid_jobs_finished", "Jobs finished by this process, by final state.", ["state"],
            registry=self.registry)
        if store is not None:
            self.registry.register(_StoreCollector(store))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
