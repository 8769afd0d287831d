"""The server's Prometheus metrics (prometheus-client), in a registry of their own per server.

Names and labels are the contract docs/monitoring.md and deploy/prometheus/edgekd-alerts.yml rely
on. Label values are bounded: endpoints are the routes (anything else is "other"), labels come from
labels.json, inputs from the model's io spec, so a hostile client cannot grow the series count.
"""
from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (.0005, .001, .002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
CONFIDENCE_BUCKETS = (.1, .2, .3, .4, .5, .6, .7, .8, .9, .95, .99, 1.0)


class Metrics:
    def __init__(self, labels: list[str], inputs: list[str], model: str, bundle: str):
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("edgekd_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                                registry=r)
        self.request_seconds = Histogram("edgekd_request_seconds", "Request latency (arrival to response)",
                                         ["endpoint", "status"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_seconds = Histogram("edgekd_queue_wait_seconds", "Time a decoded request waited for its batch",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("edgekd_batch_size", "Requests per model call", buckets=BATCH_BUCKETS, registry=r)
        self.model_seconds = Histogram("edgekd_model_seconds", "Model time per batch", buckets=LATENCY_BUCKETS,
                                       registry=r)
        self.missing = Counter("edgekd_input_missing", "Predict requests refused for a missing input", ["input"],
                               registry=r)
        self.predictions = Counter("edgekd_predictions", "Predicted class counts", ["label"], registry=r)
        self.confidence = Histogram("edgekd_confidence", "Top-class probability of each prediction",
                                    buckets=CONFIDENCE_BUCKETS, registry=r)
        self.rejected = Counter("edgekd_rejected", "Requests refused before decoding", ["reason"], registry=r)
        self.queue_depth = Gauge("edgekd_queue_depth", "Requests waiting for the model", registry=r)
        self.ready = Gauge("edgekd_ready", "1 once the model is loaded and warmed", registry=r)
        self.drift = Gauge("edgekd_drift_psi", "Population-stability index of a live input feature (or the "
                           "confidence) against the bundle's test-split reference", ["input", "feature"], registry=r)
        self.info = Gauge("edgekd_model_info", "The served model (value 1)", ["model", "bundle"], registry=r)
        self.info.labels(model=model, bundle=bundle).set(1)
        for label in labels:  # every class present from the start: rates of 0 are data too
            self.predictions.labels(label=label)
        for name in inputs:
            self.missing.labels(input=name)
        self.labels = labels

    def observe_batch(self, probs: np.ndarray, waits: list[float], model_s: float) -> None:
        self.batch_size.observe(len(waits))
        self.model_seconds.observe(model_s)
        for w in waits:
            self.queue_seconds.observe(w)
        top = probs.argmax(axis=1)
        for i, k in enumerate(top):
            self.predictions.labels(label=self.labels[int(k)]).inc()
            self.confidence.observe(float(probs[i, k]))

    def render(self, queue_depth: int, psi: dict[str, float | None]) -> bytes:
        self.queue_depth.set(queue_depth)
        for key, value in psi.items():
            if value is not None:
                name, _, feature = key.partition("/")
                self.drift.labels(input=name, feature=feature or "top_probability").set(value)
        return generate_latest(self.registry)
