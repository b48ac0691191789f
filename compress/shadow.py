"""Shadow parity on live traffic: a share of the served frames also goes through the FP32 reference.

The served postprocess (model_repository/postprocess) hands a sampled frame - the detector's
input tensor, its letterbox and the served detector's head outputs - to `Shadow.offer()`, which
returns at once: the frame goes to a worker process (`python shadow.py --worker`) that runs the
reference on the *same tensor*, decodes both heads with the served post-processing and matches
them with the parity gate's code (compress.detection.compare_heads). The worker runs under
SCHED_IDLE (nice 19 where that is refused): it only gets CPU time nothing else wants, so under
load it falls behind, and a frame offered while it still works on the last one is skipped and
counted (`skipped_busy`), never queued. At most one shadow frame exists at a time. Idle priority
alone still costs a loaded server (measured: its caches and the preemptions slowed every step by
8-20% near capacity), so a frame is also skipped as busy while the server's cores were more than
`max_cpu` busy over the last fraction of a second (`CpuLoad`, the worker's own CPU taken out).

Frames whose agreement falls below `min_frame_recall` go to the bounded evidence store
(`EvidenceStore`, rendered by `make audit`); every shadowed frame's counts go to a bounded
agreement log. Neither a failing reference nor a full or read-only disk fails a served frame:
both are counted.

The Prometheus names of everything counted are `METRICS` below: the postprocess model exports
them on Triton's /metrics, `make watch` and the alert rules (tools/alerts.py) read them.

Standard library and numpy (the worker: onnxruntime too): the repository builder copies this file
beside the postprocess model with the detection maths (yolo_ops.py) and the session set-up.
"""

from __future__ import annotations

import json
import os
import pickle
import queue
import shutil
import struct
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

try:  # inside the served model: the copy beside this file
    import yolo_ops as ops
except ImportError:  # in-process (tests, make audit)
    from compress import detection as ops

# -- what is exported: Prometheus name -> (kind, help) ---------------------------------------------------
# Detections' confidence histogram: cumulative counts per upper bound (le), as Prometheus histograms
# are (histogram_quantile() reads them), but kept as counters the model adds to once per flush
# instead of one IPC per detection. Every counter's name ends in _total (Prometheus' convention).
CONFIDENCE_BUCKETS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, "+Inf")
SHADOW_OUTCOMES = ("compared", "skipped_busy", "skipped_cap", "failed", "unavailable")
EVIDENCE_OUTCOMES = ("stored", "evicted", "dropped_error", "log_error")
GAUGES = ("yolo_shadow_enabled", "yolo_shadow_rate")  # set, not added to
EVIDENCE_ENV = "YOLO_EVIDENCE_DIR"  # overrides the repository's evidence_dir (e.g. /evidence in a pod)
READY_TIMEOUT_S = 120.0  # the worker's reference load; past it the shadow is off, the model serves on
COUNT_METRICS = {  # AgreementCounts field -> metric
    "reference_boxes": "yolo_shadow_reference_boxes_total",
    "found": "yolo_shadow_found_boxes_total",
    "overlapping": "yolo_shadow_overlapping_boxes_total",
    "class_flips": "yolo_shadow_class_flips_total",
    "score_drift_sum": "yolo_shadow_score_drift_total",
    "served_boxes": "yolo_shadow_served_boxes_total",
    "extra_boxes": "yolo_shadow_extra_boxes_total",
}
METRICS = {
    "yolo_frames_total": ("counter", "Frames the served postprocess answered"),
    "yolo_empty_frames_total": ("counter", "Frames answered with no detection"),
    "yolo_detections_total": ("counter", "Detections served"),
    "yolo_detection_confidence_total": ("counter", "Sum of the served detections' confidence"),
    "yolo_detections_by_confidence_total": ("counter", "Served detections with confidence <= le (cumulative)"),
    "yolo_shadow_frames_total": ("counter", "Frames chosen for shadow parity, by outcome"),
    **{name: ("counter", f"Shadow parity: {field.replace('_', ' ')} (sum over compared frames)")
       for field, name in COUNT_METRICS.items()},
    "yolo_shadow_low_agreement_frames_total": ("counter", "Compared frames below the evidence threshold"),
    "yolo_evidence_frames_total": ("counter", "Evidence writes by outcome: stored, evicted (beyond the caps at once), "
                                              "dropped_error, log_error (the agreement log)"),
    "yolo_shadow_enabled": ("gauge", "1 when shadow parity samples frames, 0 when off or its reference is not running"),
    "yolo_shadow_rate": ("gauge", "Share of frames chosen for shadow parity"),
    "yolo_gate_box_recall": ("gauge", "Box recall vs the reference the parity gate saw on the val split"),
    "yolo_gate_extra_boxes": ("gauge", "Extra-box share vs the reference the gate saw on the val split"),
    "yolo_gate_score_drift": ("gauge", "Mean |score change| of found boxes vs the reference the gate saw on the val split"),
    "yolo_gate_detections_per_frame": ("gauge", "Served detections per frame the gate saw on the val split"),
    "yolo_gate_mean_confidence": ("gauge", "Mean served confidence the gate saw on the val split"),
}
GATE_GAUGES = {"box_recall": "yolo_gate_box_recall", "extra_boxes": "yolo_gate_extra_boxes",
               "score_drift": "yolo_gate_score_drift",
               "detections_per_frame": "yolo_gate_detections_per_frame",
               "mean_confidence": "yolo_gate_mean_confidence"}
AGREEMENT_LOG = "agreement.jsonl"


@dataclass
class ShadowSettings:
    """From the postprocess config's parameters (the repository builder writes all but
    log_max_bytes, which keeps its default here)."""

    rate: float = 0.05  # share of frames shadowed
    max_fps: float = 5.0  # and at most this many per second
    max_cpu: float = 0.8  # skipped as busy while the server's cores are busier than this (1: never)
    min_frame_recall: float = 0.5  # a compared frame below this (or with extra boxes beyond it) is evidence
    evidence_dir: str = ""  # "" keeps no evidence
    evidence_max_frames: int = 200
    evidence_max_bytes: int = 64 << 20
    log_max_bytes: int = 8 << 20  # the agreement log: rotated once at this size (one old file kept)
    reference_file: str = "reference.onnx"
    providers: str = "cpu"

    @classmethod
    def from_parameters(cls, params: dict[str, str]) -> "ShadowSettings":
        kinds = {f: type(getattr(cls(), f)) for f in cls.__dataclass_fields__}
        return cls(**{f: kinds[f](params[f"shadow_{f}"]) for f in kinds if f"shadow_{f}" in params})

    def parameters(self) -> dict[str, str]:
        return {f"shadow_{k}": str(v) for k, v in asdict(self).items()}


# -- drift signals of every frame -------------------------------------------------------------------------

def drift_tally(detections: list) -> dict[str, float]:
    """Counter increments of the reference-free drift signals for a batch of served detections."""
    scores = np.concatenate([d.scores for d in detections]) if detections else np.zeros(0, np.float32)
    tally = {"yolo_frames_total": len(detections),
             "yolo_empty_frames_total": sum(1 for d in detections if not len(d)),
             "yolo_detections_total": int(scores.size),
             "yolo_detection_confidence_total": float(scores.astype(np.float64).sum())}
    for bound in CONFIDENCE_BUCKETS:
        tally[bucket_key(bound)] = int(scores.size if bound == "+Inf" else (scores <= bound).sum())
    return tally


def bucket_key(bound: float) -> str:
    return f'yolo_detections_by_confidence_total{{le="{bound}"}}'


def drift_baseline(detections: list) -> dict:
    """What the gate writes into the repository: the drift signals of the served model on the val split."""
    tally = drift_tally(detections)
    frames, boxes = max(tally["yolo_frames_total"], 1), tally["yolo_detections_total"]
    return {"frames": tally["yolo_frames_total"], "detections_per_frame": round(boxes / frames, 4),
            "mean_confidence": round(tally["yolo_detection_confidence_total"] / boxes, 4) if boxes else 0.0,
            "empty_frames": round(tally["yolo_empty_frames_total"] / frames, 4),
            "confidence_buckets": {str(b): round(tally[bucket_key(b)] / max(boxes, 1), 4) for b in CONFIDENCE_BUCKETS}}


def every_series() -> list[str]:
    """Every metric key the server exports, created at 0 when the model loads: a series that never
    moved still exists, so a PromQL ratio over it is 0 rather than absent (an alarm on a model
    that never finds a box must fire)."""
    # not the gate's gauges: made only when the gate measured them; at 0 they would be a baseline of
    # 0 (no detections, no confidence) and every drift alarm against them would fire
    keys = [name for name, (kind, _) in METRICS.items()
            if name not in ("yolo_detections_by_confidence_total", "yolo_shadow_frames_total",
                            "yolo_evidence_frames_total", *GATE_GAUGES.values())]
    keys += [bucket_key(b) for b in CONFIDENCE_BUCKETS] + [outcome_key(o) for o in SHADOW_OUTCOMES]
    keys += [evidence_key(o) for o in EVIDENCE_OUTCOMES]
    return keys


def evidence_key(outcome: str) -> str:
    return f'yolo_evidence_frames_total{{outcome="{outcome}"}}'


def resolve_evidence_dir(setting: str, model_dir: str, environ: dict | None = None) -> str:
    """$YOLO_EVIDENCE_DIR, else the repository's setting: absolute, or relative to the repository's
    parent (`<repo>/postprocess` -> `<repo>/../<setting>`: never a folder Triton would read as a model)."""
    environ = os.environ if environ is None else environ
    if environ.get(EVIDENCE_ENV):
        return environ[EVIDENCE_ENV]
    if not setting or os.path.isabs(setting):
        return setting
    repository_root = os.path.dirname(os.path.abspath(model_dir))
    return os.path.join(os.path.dirname(repository_root), setting)


def counts_tally(counts: "ops.AgreementCounts") -> dict[str, float]:
    return {name: getattr(counts, f) for f, name in COUNT_METRICS.items()}


def outcome_key(outcome: str) -> str:
    return f'yolo_shadow_frames_total{{outcome="{outcome}"}}'


# -- sampling ---------------------------------------------------------------------------------------------

class Sampler:
    """Every 1/rate-th frame (deterministic: the same traffic shadows the same frames), and at most
    `max_fps` per second (a token bucket holding one second's worth)."""

    def __init__(self, rate: float, max_fps: float, clock=time.monotonic):
        self.rate, self.max_fps, self.clock = min(max(rate, 0.0), 1.0), max(max_fps, 0.0), clock
        self.credit = 0.0  # the 1/rate-th frame is the first shadowed (the first one when rate is 1)
        self.tokens, self.last = max(self.max_fps, 1.0), clock()

    def choose(self) -> str | None:
        """None: not chosen; "capped": chosen but over max_fps; "chosen"."""
        self.credit += self.rate
        if self.rate <= 0 or self.credit < 1.0 - 1e-9:
            return None
        self.credit -= 1.0
        now = self.clock()
        self.tokens = min(max(self.max_fps, 1.0), self.tokens + (now - self.last) * self.max_fps)
        self.last = now
        if self.tokens < 1.0:
            return "capped"
        self.tokens -= 1.0
        return "chosen"


# -- how busy the server's cores are ---------------------------------------------------------------------

CPU_INTERVAL_S = 0.25  # the busy share is re-read at most this often (one small file read)


def _cgroup_quota_cores(cgroup: str) -> float | None:
    """Cores of a cgroup v2 CPU quota (a Kubernetes CPU limit), None without one."""
    try:
        quota, period = open(f"{cgroup}/cpu.max").read().split()[:2]
        return int(quota) / int(period) if quota != "max" else None
    except (OSError, ValueError):
        return None


class CpuLoad:
    """Share of the server's CPU busy since the last reading, without `exclude_pid`'s (the shadow
    worker's) own time: in a container with a CPU quota, the cgroup's usage against the quota;
    else /proc/stat's counters of the cores this process may run on."""

    def __init__(self, exclude_pid: int | None = None, proc: str = "/proc", cgroup: str = "/sys/fs/cgroup",
                 clock=time.monotonic, interval_s: float = CPU_INTERVAL_S):
        self.exclude_pid, self.proc, self.cgroup, self.clock, self.interval_s = exclude_pid, proc, cgroup, clock, interval_s
        self.quota = _cgroup_quota_cores(cgroup)
        self.cpus = {f"cpu{c}" for c in os.sched_getaffinity(0)} if hasattr(os, "sched_getaffinity") else None
        self.tick_s = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01
        self.last = self._read()
        self.value = 0.0

    def _excluded_s(self) -> float:
        if not self.exclude_pid:
            return 0.0
        try:  # utime and stime: fields 14 and 15, after the parenthesised command name
            fields = open(f"{self.proc}/{self.exclude_pid}/stat").read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) * self.tick_s
        except (OSError, IndexError, ValueError):
            return 0.0

    def _read(self) -> tuple[float, float, float, float] | None:
        """(clock, busy CPU seconds, CPU seconds available, the excluded process's seconds)."""
        now = self.clock()
        try:
            if self.quota:
                stat = dict(line.split() for line in open(f"{self.cgroup}/cpu.stat"))
                return now, int(stat["usage_usec"]) / 1e6, now * self.quota, self._excluded_s()
            busy = total = 0.0
            for line in open(f"{self.proc}/stat"):
                name, *values = line.split()
                if not name.startswith("cpu") or name == "cpu" or (self.cpus is not None and name not in self.cpus):
                    continue
                ticks = [int(v) for v in values[:8]]  # user nice system idle iowait irq softirq steal
                total += sum(ticks)
                busy += sum(ticks) - ticks[3] - ticks[4]
            return now, busy * self.tick_s, total * self.tick_s, self._excluded_s()
        except (OSError, ValueError, KeyError):
            return None  # unreadable: never busy (the worker's own skip still applies)

    def busy(self) -> float:
        """The share, refreshed when the last reading is older than `interval_s`."""
        if self.last is None or self.clock() - self.last[0] < self.interval_s:
            return self.value
        current = self._read()
        if current is None:
            return self.value
        available = current[2] - self.last[2]
        if available > 0:
            used = (current[1] - self.last[1]) - max(current[3] - self.last[3], 0.0)
            self.value = min(max(used / available, 0.0), 1.0)
        self.last = current
        return self.value


# -- the parent's side: hand frames over, collect results -------------------------------------------------

def _send(stream, message) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def _receive(stream):
    header = stream.read(8)
    if len(header) < 8:
        return None
    (size,) = struct.unpack("<Q", header)
    data = stream.read(size)
    return pickle.loads(data) if len(data) == size else None


def interpreter() -> str:
    """The Python that runs the worker: this one (inside Triton's stub, the first python3 on PATH,
    which is what the stub itself runs)."""
    if os.path.basename(sys.executable or "").startswith("python") and os.access(sys.executable, os.X_OK):
        return sys.executable
    return shutil.which("python3") or "python3"


class Shadow:
    """Sampling, hand-over and results; `report(deltas)` receives counter increments (a dict of
    metric key -> value) from the thread that reads the worker's results."""

    def __init__(self, settings: ShadowSettings, model_dir: str, head_config: dict, report, log=print):
        self.settings, self.report, self.log = settings, report, log
        self.sampler = Sampler(settings.rate, settings.max_fps)
        self._slot: queue.Queue = queue.Queue(maxsize=1)
        self._busy = threading.Event()
        self.load: CpuLoad | None = None
        self.available = False
        self.process = None
        if settings.rate <= 0:  # off: no worker, no reference in memory
            return
        config = {"model_dir": model_dir, "settings": asdict(settings), "head": head_config}
        try:
            import selectors
            import subprocess

            worker = os.path.join(model_dir, "shadow.py")  # the builder's copy, beside yolo_ops.py and the reference
            self.process = subprocess.Popen([interpreter(), worker, "--worker", json.dumps(config)],
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=model_dir)
            # a reference that hangs on load must not hold the served model's load with it
            # (a selector, not select(): a process with over 1024 open files has pipe fds select() refuses)
            with selectors.DefaultSelector() as selector:
                selector.register(self.process.stdout, selectors.EVENT_READ)
                waiting = selector.select(READY_TIMEOUT_S)
            ready = _receive(self.process.stdout) if waiting else {"ready": False, "error": "load timed out"}
        except Exception as error:  # noqa: BLE001 - no shadow is never a failed server
            ready = {"ready": False, "error": str(error)}
        if not ready or not ready.get("ready"):
            self.log(f"shadow parity off: the reference did not load ({(ready or {}).get('error', 'worker exited')})")
            self.close()
            return
        self.available = True
        self.load = CpuLoad(exclude_pid=self.process.pid)
        threading.Thread(target=self._write, name="shadow-writer", daemon=True).start()
        threading.Thread(target=self._read, name="shadow-reader", daemon=True).start()
        threading.Thread(target=self._watch_load, name="shadow-load", daemon=True).start()
        self.log(f"shadow parity on: {settings.rate:.1%} of frames (<= {settings.max_fps:g}/s, none while the cores are "
                 f"over {settings.max_cpu:.0%} busy) against "
                 f"{settings.reference_file}, worker pid {self.process.pid} at {ready.get('priority')}")

    def offer(self, pixels, letterbox: np.ndarray, heads: dict[str, np.ndarray]) -> str | None:
        """One served frame; returns its outcome (None: not chosen). Never blocks, never raises.
        `pixels`: the frame's input tensor, or a callable returning it (read only when handed over)."""
        choice = self.sampler.choose()
        if choice is None:
            return None
        if not self.available:
            outcome = "unavailable"
        elif choice == "capped":
            outcome = "skipped_cap"
        elif self._busy.is_set() or (self.load is not None and self.load.value > self.settings.max_cpu):
            outcome = "skipped_busy"
        else:
            self._busy.set()
            tensor = pixels() if callable(pixels) else pixels
            # a copy, not a view: the request's input memory is Triton's again once execute() returns
            job = {"time": time.time(), "pixels": np.array(tensor, copy=True), "letterbox": np.array(letterbox),
                   "heads": {k: np.ascontiguousarray(v) for k, v in heads.items()}}
            self._slot.put_nowait(job)  # empty: a job is only put while not busy
            return "handed"
        self.report({outcome_key(outcome): 1})
        return outcome

    def _watch_load(self) -> None:
        """The busy share re-read every `interval_s` (a frame sampled after an idle spell is judged on
        the last quarter second, not on an average reaching back into the idle time)."""
        while self.available:
            try:
                self.load.busy()
            except Exception:  # noqa: BLE001 - CpuLoad keeps its last value; this thread must outlive any read
                pass
            time.sleep(self.load.interval_s)

    def _write(self) -> None:
        while True:
            job = self._slot.get()
            if job is None:
                return
            try:
                _send(self.process.stdin, job)
            except (OSError, ValueError):
                self._gone("the worker's input closed")
                return

    def _read(self) -> None:
        while True:
            try:
                result = _receive(self.process.stdout)
            except Exception:  # noqa: BLE001
                result = None
            if result is None:
                self._gone("the worker exited")
                return
            try:
                deltas = {outcome_key(result["outcome"]): 1}
                if result["outcome"] == "compared":
                    deltas.update(counts_tally(ops.AgreementCounts(**result["counts"])))
                    deltas["yolo_shadow_low_agreement_frames_total"] = int(result["low"])
                for outcome in filter(None, (result.get("evidence"), result.get("log"))):
                    deltas[evidence_key(outcome)] = 1
                self.report(deltas)
            except Exception as error:  # noqa: BLE001 - one result lost, never the reader (it would leave _busy set)
                self.log(f"shadow: a result was not counted: {type(error).__name__}: {error}")
            finally:
                self._busy.clear()

    def _gone(self, why: str) -> None:
        if self.available:
            self.available = False
            self.log(f"shadow parity off: {why}")
            self.report({"yolo_shadow_enabled": 0, **({outcome_key("unavailable"): 1} if self._busy.is_set() else {})})
        self._busy.clear()

    def close(self) -> None:
        self.available = False
        try:
            self._slot.put_nowait(None)  # the writer's end
        except queue.Full:
            pass
        if self.process is not None:
            try:
                self.process.stdin.close()
            except OSError:
                pass
            try:
                self.process.wait(timeout=5)
            except Exception:  # noqa: BLE001
                self.process.kill()
                self.process.wait(timeout=5)


# -- the worker --------------------------------------------------------------------------------------------

def yield_cpu() -> str:
    """Run only on CPU time nothing else wants: SCHED_IDLE, else the lowest nice."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return "SCHED_IDLE"
    except (AttributeError, OSError):
        try:
            os.nice(19)
            return "nice 19"
        except OSError:
            return "normal priority"


def compare_frame(reference_session, input_name: str, output_names: list[str], job: dict, head: dict):
    """(counts, served detections, reference detections) of one shadowed frame."""
    pixels = job["pixels"][None]
    reference_heads = dict(zip(output_names, reference_session.run(output_names, {input_name: pixels})))
    served_heads = {k: v[None] for k, v in job["heads"].items()}
    letterbox = job["letterbox"][None]
    counts, served, reference = ops.compare_heads(reference_heads, served_heads, letterbox, tuple(head["image_size"]),
                                                  tuple(head["strides"]), head["conf"], head["iou"], head["max_det"])
    return counts[0], served[0], reference[0]


# A frame whose found boxes' scores moved this much on average is evidence too (the boxes are there,
# their scores are not: a broken calibration looks like this)
FRAME_SCORE_DRIFT = 0.25


def is_low(counts, settings: ShadowSettings) -> bool:
    """Evidence: the frame's recall of the reference's boxes, or the share of served boxes the
    reference has, below the threshold; or its found boxes' mean score drift above FRAME_SCORE_DRIFT."""
    recall = counts.found / counts.reference_boxes if counts.reference_boxes else 1.0
    kept = 1 - counts.extra_boxes / counts.served_boxes if counts.served_boxes else 1.0
    drifted = counts.found and counts.score_drift_sum / counts.found > FRAME_SCORE_DRIFT
    return min(recall, kept) < settings.min_frame_recall or bool(drifted)


def worker_main(config: dict) -> None:
    stdin = sys.stdin.buffer
    # nothing but results on the pipe: fd 1 (what native code writes to as well) becomes stderr
    stdout = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    settings, head = ShadowSettings(**config["settings"]), config["head"]
    try:
        from onnx_session import create_session, execution_providers

        path = os.path.join(config["model_dir"], settings.reference_file)
        session = create_session(path, threads=1, spinning=False,
                                 providers=execution_providers(settings.providers))
        input_name = session.get_inputs()[0].name
        output_names = [o.name for o in session.get_outputs()]
    except Exception as error:  # noqa: BLE001 - reported to the parent, which serves on without
        _send(stdout, {"ready": False, "error": f"{type(error).__name__}: {error}"})
        return
    priority = yield_cpu()  # after the load: a busy machine must not stall the model's start
    _send(stdout, {"ready": True, "priority": priority})
    store = EvidenceStore(settings.evidence_dir, settings.evidence_max_frames, settings.evidence_max_bytes,
                          settings.log_max_bytes) if settings.evidence_dir else None
    while True:
        job = _receive(stdin)
        if job is None:
            return
        try:
            counts, served, reference = compare_frame(session, input_name, output_names, job, head)
        except Exception as error:  # noqa: BLE001 - a frame the reference fails on is counted, not raised
            print(f"shadow: reference failed on a frame: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
            _send(stdout, {"outcome": "failed"})
            continue
        low = is_low(counts, settings)
        result = {"outcome": "compared", "counts": asdict(counts), "low": low}
        if store is not None:
            if not store.log(job["time"], counts):
                result["log"] = "log_error"
            if low:
                result["evidence"] = store.save(job, counts, served, reference)
        _send(stdout, result)


# -- evidence --------------------------------------------------------------------------------------------

@dataclass
class EvidenceFrame:
    path: Path  # the frame as the detector saw it (letterboxed PNG)
    record: dict = field(default_factory=dict)


class EvidenceStore:
    """Frames whose agreement fell below the threshold, with both sets of boxes, in `root`; at most
    `max_frames` frames and `max_bytes` bytes (the oldest go first). Every disk error is swallowed
    and reported as the outcome "dropped_error": evidence never fails a request."""

    def __init__(self, root: str | Path, max_frames: int = 200, max_bytes: int = 64 << 20, log_max_bytes: int = 8 << 20):
        self.root, self.max_frames, self.max_bytes, self.log_max_bytes = Path(root), max_frames, max_bytes, log_max_bytes
        self.sequence = 0

    def save(self, job: dict, counts, served, reference) -> str:
        """"stored", "evicted" (it did not fit the caps at all) or "dropped_error"."""
        png_path = None
        try:
            import cv2

            self.root.mkdir(parents=True, exist_ok=True)
            self.sequence += 1
            stem = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(job['time']))}_{os.getpid()}_{self.sequence:06d}"
            pixels = job["pixels"]
            image = np.ascontiguousarray(pixels.transpose(1, 2, 0))
            if image.dtype != np.uint8:
                image = (image * 255).round().clip(0, 255).astype(np.uint8)
            ok, png = cv2.imencode(".png", image[..., ::-1])  # the tensor is RGB
            if not ok:
                raise OSError("PNG encoding failed")
            record = {"time": job["time"], "letterbox": [float(v) for v in job["letterbox"]],
                      "counts": asdict(counts), "summary": counts.summary(),
                      "served": served.to_json(), "reference": reference.to_json()}
            png_path = self.root / f"{stem}.png"
            png_path.write_bytes(png.tobytes())
            (self.root / f"{stem}.json").write_text(json.dumps(record))
            png_path = None  # both written
            self._evict()
            return "stored" if (self.root / f"{stem}.json").exists() else "evicted"
        except Exception as error:  # noqa: BLE001
            print(f"shadow: evidence not stored: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
            if png_path is not None:  # a frame without its record is never kept
                try:
                    png_path.unlink(missing_ok=True)
                except OSError:
                    pass
            return "dropped_error"

    def frames(self) -> list[EvidenceFrame]:
        """Oldest first; a frame whose record is unreadable is skipped."""
        frames = []
        for path in sorted(self.root.glob("*.json")):
            try:
                frames.append(EvidenceFrame(path.with_suffix(".png"), json.loads(path.read_text())))
            except (OSError, ValueError):
                continue
        return [f for f in frames if f.path.exists()]

    def _evict(self) -> None:
        """Oldest first until within the caps; files another instance removed meanwhile are skipped."""
        sizes = {}
        for path in sorted(self.root.glob("*.json")):
            try:
                png = path.with_suffix(".png")
                sizes[path] = path.stat().st_size + (png.stat().st_size if png.exists() else 0)
            except OSError:
                continue
        records = list(sizes)
        total = sum(sizes.values())
        while records and (len(records) > self.max_frames or total > self.max_bytes):
            oldest = records.pop(0)
            total -= sizes[oldest]
            oldest.with_suffix(".png").unlink(missing_ok=True)
            oldest.unlink(missing_ok=True)

    def log(self, when: float, counts) -> bool:
        """One line per compared frame; rotated once past `log_max_bytes` (one old file kept). False
        when the disk refused it."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            path = self.root / AGREEMENT_LOG
            if path.exists() and path.stat().st_size > self.log_max_bytes:
                path.replace(path.with_suffix(".jsonl.1"))
            with path.open("a") as out:
                out.write(json.dumps({"time": round(when, 3), **asdict(counts)}) + "\n")
            return True
        except OSError:
            return False

    def agreement_log(self) -> list[dict]:
        lines = []
        for path in (self.root / f"{AGREEMENT_LOG}.1", self.root / AGREEMENT_LOG):
            try:
                lines += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            except (OSError, ValueError):
                continue
        return lines


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--worker":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    worker_main(json.loads(sys.argv[2]))
