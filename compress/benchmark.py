"""CPU latency of several models measured side by side in one run.

Rounds interleave the models (A B C A B C ...) so machine noise hits all of them alike; each
model gets the same thread count and input. Per model and batch size: the fastest decile (the
headline), median and quartiles (ms).

Noise on these shared machines is one-sided and comes in phases that do not hit all models alike:
measured, the FP32 baseline at batch 8 ran at 57 ms, then at 102 ms for a dozen rounds, while the
INT8 model went from 18 to 26 ms, so per-round ratios moved from 3.1 to 3.9 and their median
followed whichever phase covered more rounds (two runs 18% apart). A speed-up is therefore the
ratio of the fastest deciles (the undisturbed machine), with a bootstrap interval over the rounds
(p10-p90 of the estimate) that says whether a target is met beyond the noise; the per-round
ratios are kept beside it. `measure_in_subprocess` runs it in a fresh interpreter: a process that has trained
with torch keeps OpenMP threads that compete with ONNX Runtime's (measured: the same model 4x
slower in-process). `latency_in_workers` gives every model a process of its own, each on its own
runtime (ONNX Runtime or OpenVINO), interleaved the same way: the peer bench's rows.

    python -m compress.benchmark --imgsz 256 baseline=artifacts/export/baseline.onnx int8=...
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np

from compress.errors import ToolkitError, cli_entry
from compress.onnx_session import create_session
from compress.progress import progress
from compress.runtimes import PRECISIONS, RUNTIMES

BATCH_SIZES = (1, 8)  # one camera frame; a dynamic batch the served detector commonly forms
WARMUP_RUNS = 3
ROUNDS = {1: 60, 8: 30}  # interleaved rounds per batch size (bs8 runs take ~8x longer)
UNDISTURBED_PERCENTILE = 10  # the fastest decile: rounds the machine's noise left alone
BOOTSTRAP_RESAMPLES = 2000


def spread(values) -> dict[str, float]:
    """Median and the percentiles a reader needs to judge noise."""
    values = np.asarray(values, dtype=float)
    p10, p25, p50, p75, p90 = np.percentile(values, [10, 25, 50, 75, 90])
    return {"median": round(float(p50), 3), "p25": round(float(p25), 3), "p75": round(float(p75), 3),
            "p10": round(float(p10), 3), "p90": round(float(p90), 3)}


def interleaved_rounds(timers: dict[str, Callable[[int], float]], rounds: dict[int, int] | None = None,
                       pause_s: float = 0.0) -> dict[str, dict]:
    """{name: {"bs1_ms": fastest decile, "bs1": spread, "bs1_rounds": [ms per round], ...}}: each
    timer(batch) runs its model once and returns milliseconds. `pause_s` between two models lets
    an idle runtime's threads stop spinning before the next one runs."""
    rounds = rounds or ROUNDS
    results: dict[str, dict] = {name: {} for name in timers}
    names = list(timers)
    for batch in BATCH_SIZES:
        timings: dict[str, list[float]] = {name: [] for name in timers}
        for timer in timers.values():
            for _ in range(WARMUP_RUNS):
                timer(batch)
        for index in progress(range(rounds[batch]), desc=f"latency bs{batch}"):
            # rotate the order each round: no model always runs right after the same one
            for name in names[index % len(names):] + names[:index % len(names)]:
                if pause_s:
                    time.sleep(pause_s)
                timings[name].append(timers[name](batch))
        for name in timers:
            stats = spread(timings[name])
            results[name].update({f"bs{batch}_ms": stats["p10"], f"bs{batch}": stats,
                                  f"bs{batch}_rounds": [round(t, 4) for t in timings[name]]})
    return results


def session_timer(session, image_size: tuple[int, int]) -> Callable[[int], float]:
    """Times one run of `session` on a fixed random batch (one per batch size)."""
    feeds: dict[int, np.ndarray] = {}

    def run_once(batch: int) -> float:
        if batch not in feeds:
            feeds[batch] = np.random.default_rng(0).random((batch, 3, *image_size), dtype=np.float32)
        start = time.perf_counter()
        session.run(None, {"images": feeds[batch]})
        return (time.perf_counter() - start) * 1e3

    return run_once


def input_size(path: Path, default: tuple[int, int]) -> tuple[int, int]:
    """The input size a detector file was exported for (its metadata), else `default`: rows of
    one timing run may take different sizes (input resolution is a search dimension)."""
    from compress.errors import UnsupportedModelError
    from compress.export import read_info

    try:
        return tuple(read_info(path).image_size)
    except UnsupportedModelError:
        return tuple(default)


def latency_side_by_side(models: dict[str, Path], image_size: tuple[int, int], threads: int = 2,
                         rounds: dict[int, int] | None = None) -> dict[str, dict]:
    """ONNX Runtime sessions in this process, interleaved (`interleaved_rounds`), each fed at its
    own input size (`image_size` for a file that does not say)."""
    sessions = {name: create_session(path, threads, spinning=False) for name, path in models.items()}
    return interleaved_rounds({name: session_timer(session, input_size(models[name], image_size))
                               for name, session in sessions.items()}, rounds)


class WorkerTimer:
    """One model on one runtime in a process of its own, timing itself on request: runtimes never
    share a process (no runtime's idle threads compete with another's), and the timing excludes
    the pipe. With `frames` (an .npz of prepared val frames and their letterbox parameters, as
    `save_frames` writes) the worker feeds those and can also time the served post-processing
    (`end_to_end`: detector outputs to boxes, as the ensemble's postprocess runs it); after such a
    request `last_boxes` holds how many boxes that post-processing returned (None after a
    detector-only request): evidence of what was timed that no timing noise can blur."""

    def __init__(self, path: Path, image_size: tuple[int, int], threads: int, runtime: str = "onnxruntime",
                 precision: str = "f32", frames: Path | None = None):
        self.path, self.runtime = Path(path), runtime
        command = [sys.executable, "-m", "compress.benchmark", "--worker", "--runtime", runtime,
                   "--precision", precision, "--imgsz", str(image_size[0]), "--threads", str(threads)]
        command += ["--frames", str(frames)] if frames else []
        self.process = subprocess.Popen([*command, f"model={path}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True)
        self.facts = json.loads(self._answer())  # what the worker's runtime chose (threads, precision, providers)
        self.last_boxes: int | None = None

    def _answer(self) -> str:
        line = self.process.stdout.readline()
        if not line:
            raise ToolkitError(f"the benchmark worker for {self.path} ({self.runtime}) exited with code "
                               f"{self.process.wait()}", hint="its error is printed above")
        return line

    def __call__(self, batch: int, end_to_end: bool = False) -> float:
        self.process.stdin.write(f"{batch}{' end_to_end' if end_to_end else ''}\n")
        self.process.stdin.flush()
        milliseconds, *boxes = self._answer().split()
        self.last_boxes = int(boxes[0]) if boxes else None
        return float(milliseconds)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextmanager
def timing_workers(models: dict[str, dict], image_size: tuple[int, int], threads: int, frames: Path | None = None):
    """{name: WorkerTimer} for `models` {name: {"path", "runtime", "precision", "frames"}} (a
    model's own `frames` for one of another input size), all closed on exit."""
    timers: dict[str, WorkerTimer] = {}
    try:
        for name, spec in models.items():
            timers[name] = WorkerTimer(spec["path"], image_size, threads, spec.get("runtime", "onnxruntime"),
                                       spec.get("precision", "f32"), spec.get("frames", frames))
        yield timers
    finally:
        for timer in timers.values():
            timer.close()


def latency_in_workers(models: dict[str, dict], image_size: tuple[int, int], threads: int,
                       rounds: dict[int, int] | None = None, pause_s: float = 0.05) -> dict[str, dict]:
    """`interleaved_rounds` over `timing_workers`; every row also gets its worker's `facts`."""
    with timing_workers(models, image_size, threads) as timers:
        results = interleaved_rounds(timers, rounds, pause_s)
        for name, timer in timers.items():
            results[name]["facts"] = timer.facts
    return results


def save_frames(payloads: list[bytes], image_size: tuple[int, int], path: Path, pixel_type: str = "float32") -> Path:
    """Encoded frames prepared as the served preprocess prepares them, for `WorkerTimer(frames=)`."""
    from compress.detection import prepare_image

    tensors, params = zip(*(prepare_image(p, image_size, pixel_type) for p in payloads))
    np.savez(path, images=np.stack(tensors), params=np.stack(params))
    return path


def _frames_of(frames: dict[str, np.ndarray], batch: int) -> tuple[np.ndarray, np.ndarray]:
    picks = np.arange(batch) % len(frames["images"])  # fewer frames than the batch: repeated
    return frames["images"][picks], frames["params"][picks]


def _serve_worker(path: Path, image_size: tuple[int, int], threads: int, runtime: str, precision: str,
                  frames_path: Path | None) -> None:
    """The worker side of `WorkerTimer`: one line per request (a batch size, optionally
    `end_to_end`), one line back (ms, and for `end_to_end` the number of boxes returned)."""
    from compress.runtimes import create_runtime_session, session_facts

    session = create_runtime_session(path, runtime, threads, precision, spinning=False)
    print(json.dumps({"runtime": runtime, "pid": os.getpid(), **session_facts(session)}), flush=True)
    if frames_path is None:
        timer = session_timer(session, input_size(path, image_size))
        for line in sys.stdin:
            print(f"{timer(int(line.split()[0])):.4f}", flush=True)
        return
    from compress.local_detector import LocalDetector

    detector = LocalDetector(path, session=session)
    with np.load(frames_path) as data:
        frames = {"images": data["images"], "params": data["params"]}
    for line in sys.stdin:
        words = line.split()
        images, params = _frames_of(frames, int(words[0]))
        start = time.perf_counter()
        if "end_to_end" in words:
            detections = detector.detect_prepared(images, params)
            milliseconds = (time.perf_counter() - start) * 1e3
            print(f"{milliseconds:.4f} {sum(len(d) for d in detections)}", flush=True)
        else:
            session.run(None, {"images": images})
            print(f"{(time.perf_counter() - start) * 1e3:.4f}", flush=True)


def speedup(latency: dict[str, dict], reference: str, model: str, batch: int) -> dict:
    """Speed-up of `model` over `reference`: `estimate` is the ratio of their fastest-decile
    latencies, p10..p90 its bootstrap interval (rounds resampled in pairs), `per_round` the
    spread of same-round ratios."""
    ref = np.asarray(latency[reference][f"bs{batch}_rounds"], dtype=float)
    own = np.asarray(latency[model][f"bs{batch}_rounds"], dtype=float)
    picks = np.random.default_rng(0).integers(0, len(ref), (BOOTSTRAP_RESAMPLES, len(ref)))
    resampled = (np.percentile(ref[picks], UNDISTURBED_PERCENTILE, axis=1)
                 / np.percentile(own[picks], UNDISTURBED_PERCENTILE, axis=1))
    estimate = np.percentile(ref, UNDISTURBED_PERCENTILE) / np.percentile(own, UNDISTURBED_PERCENTILE)
    interval = spread(resampled)
    return {"estimate": round(float(estimate), 3), "p10": interval["p10"], "p90": interval["p90"],
            "per_round": spread(ref / own)}


def verdict(ratio: dict[str, float], target: float) -> str:
    """met / missed beyond the noise (80% of rounds on one side), else within noise."""
    if ratio["p10"] >= target:
        return "met"
    if ratio["p90"] < target:
        return "missed"
    return "within noise"


# Other processes using this many cores during a measurement make it a different machine: the
# fastest decile needs some undisturbed rounds, and a busy run may have none (training beside a
# measurement inflates the FP32/INT8 ratio).
BUSY_MACHINE_CORES = 0.25


def _cpu_seconds() -> tuple[float, float] | None:
    """(busy, steal) CPU seconds of the whole machine since boot (Linux), None elsewhere."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


def _own_cpu_seconds() -> float:
    return sum(getattr(resource.getrusage(who), field) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for field in ("ru_utime", "ru_stime"))


@contextmanager
def competing_load():
    """Yields a dict that, after the block, says how many cores other processes kept busy and
    how many the hypervisor took (steal) while the block ran, on average: the noise a latency
    measurement cannot cancel. Empty where /proc/stat does not exist."""
    record: dict[str, float | bool] = {}
    before, own_before, start = _cpu_seconds(), _own_cpu_seconds(), time.perf_counter()
    yield record
    after, wall = _cpu_seconds(), time.perf_counter() - start
    if before is None or after is None or wall <= 0:
        return
    others = (after[0] - before[0]) - (_own_cpu_seconds() - own_before)
    record.update({"other_processes_cores": round(max(others, 0.0) / wall, 2),
                   "steal_cores": round((after[1] - before[1]) / wall, 2), "seconds": round(wall, 1)})
    record["busy"] = record["other_processes_cores"] + record["steal_cores"] > BUSY_MACHINE_CORES


def measure_in_subprocess(models: dict[str, Path], image_size: tuple[int, int], threads: int = 2,
                          rounds: dict[int, int] | None = None) -> dict[str, dict]:
    rounds = rounds or ROUNDS
    command = [sys.executable, "-m", "compress.benchmark", "--imgsz", str(image_size[0]), "--threads", str(threads),
               "--rounds", *(str(rounds[b]) for b in BATCH_SIZES), *(f"{name}={path}" for name, path in models.items())]
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(result.stdout)


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="name=path.onnx")
    parser.add_argument("--imgsz", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, nargs=len(BATCH_SIZES), default=[ROUNDS[b] for b in BATCH_SIZES],
                        help=f"interleaved rounds per batch size {BATCH_SIZES}")
    parser.add_argument("--worker", action="store_true", help="serve timings of one model over stdin/stdout")
    parser.add_argument("--runtime", default="onnxruntime", choices=RUNTIMES, help="the worker's runtime")
    parser.add_argument("--precision", default="f32", choices=PRECISIONS, help="an OpenVINO worker's float precision")
    parser.add_argument("--frames", type=Path, help="the worker's feed: prepared frames (save_frames), not random")
    args = parser.parse_args(argv)
    models = dict(item.split("=", 1) for item in args.models)
    if args.worker:
        try:
            _serve_worker(Path(next(iter(models.values()))), (args.imgsz, args.imgsz), args.threads, args.runtime,
                          args.precision, args.frames)
        except ToolkitError:
            raise
        except Exception as error:  # a runtime's own failure (a reshape, a kernel): one line, not its traceback
            raise ToolkitError(f"{args.runtime} failed on {next(iter(models.values()))}: "
                               f"{str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__}") from None
        return
    results = latency_side_by_side({k: Path(v) for k, v in models.items()}, (args.imgsz, args.imgsz),
                                   threads=args.threads, rounds=dict(zip(BATCH_SIZES, args.rounds)))
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
