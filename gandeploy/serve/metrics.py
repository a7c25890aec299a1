"""Prometheus metrics of one server, in a registry of its own (not the process-global default)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

disable_created_metrics()  # the *_created series double the page and no dashboard of ours reads them

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _powers_of_two(limit: int) -> tuple[float, ...]:
    sizes, k = [], 1
    while k < limit:
        sizes.append(float(k))
        k *= 2
    return (*sizes, float(limit))


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, max_batch: int, queued, ready):
        """`queued()` -> images waiting in the batching queue; `ready()` -> whether the model is warmed up."""
        self.registry = r = CollectorRegistry()
        self.requests = Counter("gandeploy_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("gandeploy_request_duration_seconds", "Time from request to response body",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.images = Counter("gandeploy_images", "Images returned", registry=r)
        self.batch_images = Histogram("gandeploy_batch_images", "Images per backend batch",
                                      buckets=_powers_of_two(max_batch), registry=r)
        self.batch_requests = Histogram("gandeploy_batch_requests", "Requests coalesced into one backend batch",
                                        buckets=_powers_of_two(max_batch), registry=r)
        Gauge("gandeploy_queue_images", "Images waiting in the batching queue",
              registry=r).set_function(queued)
        Gauge("gandeploy_ready", "1 once the model is loaded and warmed up", registry=r).set_function(
            lambda: float(ready()))
        self.in_flight = Gauge("gandeploy_requests_in_flight", "Generate requests being served", registry=r)

    def observe_batch(self, images: int, requests: int) -> None:
        self.batch_images.observe(images)
        self.batch_requests.observe(requests)

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def text(self) -> bytes:
        return generate_latest(self.registry)
