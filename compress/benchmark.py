"""ONNX Runtime CPU latency of several models measured side by side in one run.

Rounds interleave the models (A B C A B C ...) so machine noise hits all of them alike; each
model gets the same thread count and input. Medians in milliseconds. `measure_in_subprocess`
runs it in a fresh interpreter: a process that has trained with torch keeps OpenMP threads
that compete with ONNX Runtime's (measured: the same model 4x slower in-process).

    python -m compress.benchmark --imgsz 256 baseline=artifacts/export/baseline.onnx int8=...
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tools.progress import progress


def _session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle sessions' threads otherwise spin-wait and steal the cores from the one being timed
    # (interleaved, the same model measured 2x slower with spinning on).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
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


def measure_in_subprocess(models: dict[str, Path], image_size: tuple[int, int], threads: int = 2,
                          rounds: int = 30) -> dict[str, dict[str, float]]:
    command = [sys.executable, "-m", "compress.benchmark", "--imgsz", str(image_size[0]), "--threads", str(threads),
               "--rounds", str(rounds), *(f"{name}={path}" for name, path in models.items())]
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(result.stdout)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="name=path.onnx")
    parser.add_argument("--imgsz", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args(argv)
    models = dict(item.split("=", 1) for item in args.models)
    results = latency_side_by_side({k: Path(v) for k, v in models.items()}, (args.imgsz, args.imgsz),
                                   threads=args.threads, rounds=args.rounds)
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
