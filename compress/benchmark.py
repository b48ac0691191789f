"""ONNX Runtime CPU latency of several models measured side by side in one run.

Rounds interleave the models (A B C A B C ...) so machine noise hits all of them alike; each
model gets the same thread count and input. Medians in milliseconds.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from tools.progress import progress


def _session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def latency_side_by_side(models: dict[str, Path], image_size: tuple[int, int], batch_sizes=(1, 8), threads: int = 2,
                         rounds: int = 20, warmup: int = 3) -> dict[str, dict[str, float]]:
    """{name: {"bs1_ms": median, "bs8_ms": median, ...}} for every model."""
    sessions = {name: _session(path, threads) for name, path in models.items()}
    results: dict[str, dict[str, float]] = {name: {} for name in models}
    for batch in batch_sizes:
        feed = np.random.default_rng(0).random((batch, 3, *image_size), dtype=np.float32)
        timings: dict[str, list[float]] = {name: [] for name in models}
        for session in sessions.values():
            for _ in range(warmup):
                session.run(None, {"images": feed})
        count = rounds if batch == 1 else max(5, rounds // 2)
        for _ in progress(range(count), desc=f"latency bs{batch}"):
            for name, session in sessions.items():
                start = time.perf_counter()
                session.run(None, {"images": feed})
                timings[name].append((time.perf_counter() - start) * 1e3)
        for name in models:
            results[name][f"bs{batch}_ms"] = round(statistics.median(timings[name]), 3)
    return results
