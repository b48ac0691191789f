"""Scrape Triton's Prometheus metrics during a run and turn counter deltas into per-model numbers."""

from __future__ import annotations

import re
import threading
import time
import urllib.request

from tools.triton_config import ENSEMBLE_NAME

COUNTERS = ("nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
            "nv_inference_exec_count", "nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us",
            "nv_inference_compute_input_duration_us", "nv_inference_compute_output_duration_us")
LINE = re.compile(r'^(\w+)\{([^}]*)\} (\S+)$')


def parse(text: str) -> dict[str, dict[str, float]]:
    """{model: {counter: value}} summed over versions."""
    models: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        match = LINE.match(line)
        if not match or match.group(1) not in COUNTERS:
            continue
        model = re.search(r'model="([^"]+)"', match.group(2))
        if model:
            entry = models.setdefault(model.group(1), {})
            entry[match.group(1)] = entry.get(match.group(1), 0.0) + float(match.group(3))
    return models


def scrape(url: str) -> dict[str, dict[str, float]]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return parse(response.read().decode())


class MetricsRecorder:
    """Polls the metrics endpoint in a thread; `summary()` gives per-model deltas."""

    def __init__(self, url: str, interval_s: float = 1.0):
        self.url, self.interval_s = url, interval_s
        self.snapshots: list[tuple[float, dict]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            try:
                self.snapshots.append((time.time(), scrape(self.url)))
            except OSError:
                pass
            self._stop.wait(self.interval_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        try:
            self.snapshots.append((time.time(), scrape(self.url)))
        except OSError:
            pass

    def summary(self) -> dict:
        if len(self.snapshots) < 2:
            return {"models": {}, "bottleneck": None, "snapshots": len(self.snapshots)}
        first, last = self.snapshots[0][1], self.snapshots[-1][1]
        models = {}
        for name, end in last.items():
            start = first.get(name, {})
            delta = {k: end.get(k, 0.0) - start.get(k, 0.0) for k in COUNTERS}
            requests, executions = delta["nv_inference_request_success"], delta["nv_inference_exec_count"]
            compute_us = sum(delta[k] for k in COUNTERS if k.startswith("nv_inference_compute"))
            models[name] = {
                "requests": int(requests), "failures": int(delta["nv_inference_request_failure"]),
                "executions": int(executions),
                "avg_batch_size": round(delta["nv_inference_count"] / executions, 2) if executions else None,
                "queue_ms_per_request": round(delta["nv_inference_queue_duration_us"] / requests / 1e3, 3) if requests else None,
                "compute_ms_per_execution": round(compute_us / executions / 1e3, 3) if executions else None,
                "compute_ms_per_request": round(compute_us / requests / 1e3, 3) if requests else None,
            }
        steps = {n: m for n, m in models.items() if m["requests"] and n != ENSEMBLE_NAME}
        bottleneck = max(steps, key=lambda n: (steps[n]["queue_ms_per_request"] or 0) + (steps[n]["compute_ms_per_request"] or 0),
                         default=None)
        return {"models": models, "bottleneck": bottleneck, "snapshots": len(self.snapshots)}
