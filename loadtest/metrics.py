"""Scrape Triton's Prometheus metrics during a run and turn counter deltas into per-model numbers."""

from __future__ import annotations

import urllib.request

from tools import triton_metrics
from tools.periodic import PeriodicSampler  # noqa: F401  (the load tests' samplers build on it)
from tools.triton_config import ENSEMBLE_NAME

COUNTERS = ("nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
            "nv_inference_exec_count", "nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us",
            "nv_inference_compute_input_duration_us", "nv_inference_compute_output_duration_us")


def parse(text: str) -> dict[str, dict[str, float]]:
    """{model: {counter: value}} summed over versions."""
    return triton_metrics.parse(text, COUNTERS)


def scrape(url: str) -> dict[str, dict[str, float]]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return parse(response.read().decode())


class MetricsRecorder(PeriodicSampler):
    """Polls the metrics endpoint; `deltas()` are its counters' increases over the run."""

    def __init__(self, url: str, interval_s: float = 1.0):
        super().__init__(interval_s, final_sample=True)
        self.url = url

    def sample(self) -> dict[str, dict[str, float]]:
        return scrape(self.url)

    def deltas(self) -> dict[str, dict[str, float]]:
        """{model: {counter: increase}} between the first and the last sample (empty if < 2)."""
        if len(self.samples) < 2:
            return {}
        first, last = self.samples[0][1], self.samples[-1][1]
        return {name: {k: end.get(k, 0.0) - first.get(name, {}).get(k, 0.0) for k in COUNTERS}
                for name, end in last.items()}


def combined_summary(recorders: list[MetricsRecorder]) -> dict:
    """Per-model requests, batch size, queue and compute time over one or several replicas (their
    counters added up), and the bottleneck step. A replica that died mid-run counts up to its
    last scrape."""
    totals: dict[str, dict[str, float]] = {}
    for recorder in recorders:
        for name, delta in recorder.deltas().items():
            entry = totals.setdefault(name, dict.fromkeys(COUNTERS, 0.0))
            for counter, value in delta.items():
                entry[counter] += value
    models = {}
    for name, delta in totals.items():
        requests, executions = delta["nv_inference_request_success"], delta["nv_inference_exec_count"]
        # a replica restarted mid-run can show executions without inferences: no batch size then
        batch = delta["nv_inference_count"] / executions if executions and delta["nv_inference_count"] else 0.0
        compute_us = sum(delta[k] for k in COUNTERS if k.startswith("nv_inference_compute"))
        models[name] = {
            "requests": int(requests), "failures": int(delta["nv_inference_request_failure"]),
            "executions": int(executions),
            "avg_batch_size": round(batch, 2) if batch else None,
            "queue_ms_per_request": round(delta["nv_inference_queue_duration_us"] / requests / 1e3, 3) if requests else None,
            # Triton adds a batch's compute time to each of its requests' counters: per request
            # this is the run its batch took; the step was busy about compute / avg batch.
            "compute_ms_per_request": round(compute_us / requests / 1e3, 3) if requests else None,
            "busy_s": round(compute_us / 1e6 / batch, 2) if batch else None,
            # the step's busy time per frame it answered: what one more frame costs it
            "compute_ms_per_frame": round(compute_us / 1e3 / batch / requests, 3) if batch and requests else None,
        }
    steps = {n: m for n, m in models.items() if m["requests"] and n != ENSEMBLE_NAME}
    bottleneck = max(steps, key=lambda n: (steps[n]["queue_ms_per_request"] or 0) + (steps[n]["compute_ms_per_request"] or 0),
                     default=None)
    return {"models": models, "bottleneck": bottleneck, "snapshots": sum(len(r.samples) for r in recorders),
            "endpoints": len(recorders)}
