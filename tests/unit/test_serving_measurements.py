"""Camera-sized frame sets, per-size capacity records, and reading Triton, perf_analyzer and shed causes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from compress.dataset import FRAME_SIZES, DatasetSpec, generate
from compress.errors import InputFileError
from loadtest.burst import burst_summary
from tools.capacity_plan import capacity_for
from tools.frame_sets import describe, resolve_frames
from loadtest.frames import shed_cause, summarize
from loadtest.metrics import combined_summary, parse


def test_camera_frames_have_their_size_and_labels_inside_it(tmp_path):
    data_yaml = generate(tmp_path, DatasetSpec(train_images=0, val_images=3, seed=1, frame=FRAME_SIZES["720p"],
                                               jpeg_quality=85))
    frame_set = describe("720p", tmp_path / "images" / "val", data_yaml)
    assert (frame_set.width, frame_set.height, frame_set.count) == (1280, 720, 3)
    labels = np.concatenate([np.loadtxt(p, ndmin=2) for p in sorted((tmp_path / "labels" / "val").glob("*.txt"))])
    centres, sizes = labels[:, 1:3], labels[:, 3:5]
    assert ((centres - sizes / 2) >= -1e-6).all() and ((centres + sizes / 2) <= 1 + 1e-6).all()
    # objects keep their size relative to the long side: at the model's letterbox they look as trained
    widths_px = sizes[:, 0] * 1280
    assert widths_px.min() >= 0.1 * 1280 * 0.7 and widths_px.max() <= 0.35 * 1280 * 1.01


def test_frame_set_names_resolve_and_a_wrong_one_says_what_exists(tmp_path):
    generated = resolve_frames("480p", tmp_path)  # generated on first use, labelled
    assert (generated.width, generated.height) == FRAME_SIZES["480p"] and generated.data_yaml.exists()
    folder = resolve_frames(str(tmp_path / "frames" / "480p" / "images" / "val"), tmp_path)
    assert folder.name == "val" and folder.data_yaml is None and folder.count == generated.count
    with pytest.raises(InputFileError, match="1080p"):
        resolve_frames("4k", tmp_path)


def _capacity(name: str, width: int, height: int, streams: int) -> dict:
    return {"capacity_streams": streams, "fps": 10.0, "frame_set": {"name": name, "width": width, "height": height}}


def test_capacity_is_looked_up_by_the_frames_it_was_measured_with(tmp_path):
    (tmp_path / "capacity").mkdir()
    (tmp_path / "capacity" / "capacity.json").write_text(json.dumps({"by_frames": {
        "dataset": _capacity("dataset", 320, 320, 30), "1080p": _capacity("1080p", 1920, 1080, 12)}}))
    assert capacity_for(tmp_path, "256")["capacity_streams"] == 30
    assert capacity_for(tmp_path, "1080p")["capacity_streams"] == 12
    assert capacity_for(tmp_path)["capacity_streams"] == 12  # no name: the largest frames measured
    assert capacity_for(tmp_path, "720p") is None


def test_capacity_plan_assumes_1080p_when_measured_and_says_so(tmp_path):
    from tools.capacity_plan import _frames_label, measured_capacity

    (tmp_path / "capacity").mkdir()
    record = {"by_frames": {"dataset": _capacity("dataset", 320, 320, 30)}}
    (tmp_path / "capacity" / "capacity.json").write_text(json.dumps(record))
    assert measured_capacity(tmp_path)["capacity_streams"] == 30  # only the dataset measured: that one
    with pytest.raises(InputFileError, match="FRAMES=1080p"):
        measured_capacity(tmp_path, "1080p")
    record["by_frames"]["1080p"] = {**_capacity("1080p", 1920, 1080, 12), "frame_set": {
        "name": "1080p", "width": 1920, "height": 1080, "mean_kib": 310.0}}
    (tmp_path / "capacity" / "capacity.json").write_text(json.dumps(record))
    chosen = measured_capacity(tmp_path)
    assert chosen["capacity_streams"] == 12 and _frames_label(chosen).startswith("1080p (1920x1080")


TRITON_METRICS = """\
# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="detector",version="1"} 40
nv_inference_request_success{model="detector",version="2"} 2
nv_inference_request_success{model="yolo",version="1"} 42
# HELP nv_inference_count Number of inferences performed (does not include cached requests)
# TYPE nv_inference_count counter
nv_inference_count{model="detector",version="1"} 40
# HELP nv_inference_exec_count Number of model executions performed (does not include cached requests)
# TYPE nv_inference_exec_count counter
nv_inference_exec_count{model="detector",version="1"} 10
# HELP nv_inference_compute_infer_duration_us Cumulative compute inference duration in microseconds
# TYPE nv_inference_compute_infer_duration_us counter
nv_inference_compute_infer_duration_us{model="detector",version="1"} 80000
# HELP nv_cpu_utilization CPU utilization rate [0.0 - 1.0]
# TYPE nv_cpu_utilization gauge
nv_cpu_utilization 0.5
"""


def test_triton_metrics_are_read_with_prometheus_parser_and_summed_over_versions():
    models = parse(TRITON_METRICS)
    assert models["detector"]["nv_inference_request_success"] == 42 and models["yolo"]["nv_inference_request_success"] == 42
    assert models["detector"]["nv_inference_compute_infer_duration_us"] == 80000
    assert "nv_cpu_utilization" not in models.get("detector", {})


def test_compute_per_frame_divides_the_batch_run_among_its_frames():
    class Recorder:  # two scrapes: nothing, then TRITON_METRICS
        samples = [(0.0, {}), (1.0, parse(TRITON_METRICS))]

        def deltas(self):
            return {name: dict(values) for name, values in parse(TRITON_METRICS).items()}

    detector = combined_summary([Recorder()])["models"]["detector"]
    # 42 requests in 10 runs of 4 frames (40 inferences); each request's counter holds its batch's
    # run, so the detector was busy 80 ms / 4 = 20 ms for 42 frames
    assert detector["compute_ms_per_frame"] == pytest.approx(20 / 42, abs=1e-3)


class _Shed(Exception):
    def status(self):
        return "StatusCode.UNAVAILABLE"


def test_shed_frames_are_counted_by_the_cause_triton_gives():
    full = _Shed("[StatusCode.UNAVAILABLE] Exceeds maximum queue size")
    late = _Shed("[StatusCode.UNAVAILABLE] Request timeout expired")
    assert shed_cause(full) == "queue_full" and shed_cause(late) == "timeout" and shed_cause(None) is None
    frames = [{"due": 0.0, "latency_ms": 5.0, "status": "rejected", "cause": "queue_full"},
              {"due": 0.1, "latency_ms": 250.0, "status": "rejected", "cause": "timeout"},
              {"due": 0.2, "latency_ms": 30.0, "status": "ok"}]
    assert summarize(frames, 10, 100)["rejected_by_cause"] == {"queue_full": 1, "timeout": 1, "other": 0}
    burst = burst_summary([[{"latency_ms": 30.0, "status": "ok"}, {"latency_ms": 260.0, "status": "ok"},
                            {"latency_ms": 251.0, "status": "rejected", "cause": "timeout"}]], slo_ms=100)
    assert (burst["answered"], burst["shed"], burst["answered_within_window"]) == (2, 1, 1)
    assert burst["shed_by_cause"]["timeout"] == 1 and burst["burst_span_ms"] == [260.0]


def test_perf_analyzer_results_come_from_its_csv(tmp_path):
    from loadtest.peer import read_perf_analyzer_csv

    csv_path = tmp_path / "perf_analyzer_c8.csv"
    csv_path.write_text(
        "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
        "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency\n"
        "8,212.5,40,1500,9000,300,25000,200,60,35000,41000,43000,52000\n")
    result = read_perf_analyzer_csv(csv_path)
    assert result == {"throughput_fps": 212.5, "avg_latency_ms": 36.1, "p99_latency_ms": 52.0, "server_queue_ms": 9.0}


def test_usable_cores_honour_a_cgroup_cpu_limit(tmp_path):
    """A Kubernetes CPU limit is a cgroup quota; the affinity mask still lists every core of the node."""
    import os

    from compress.detection import usable_cores

    affinity = len(os.sched_getaffinity(0))
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs: two threads can use it
    assert usable_cores(str(v2)) == min(affinity, 2)
    (v2 / "cpu.max").write_text("max 100000\n")
    assert usable_cores(str(v2)) == affinity
    (v2 / "cpu.max").write_text("50000 100000\n")
    assert usable_cores(str(v2)) == 1
    v1 = tmp_path / "v1" / "cpu"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert usable_cores(str(tmp_path / "v1")) == 1
    assert usable_cores(str(tmp_path / "none")) == affinity


@pytest.mark.parametrize("served_fps, ratio, expected", [
    ([95.0, 97.0, 93.0], 0.95, "met"),  # every round at >= 90% of in-process
    ([80.0, 85.0, 82.0], 0.82, "missed"),  # every round below
    ([85.0, 95.0, 92.0], 0.92, "within noise"),  # rounds on both sides of the goal
    ([89.0, 95.0, 96.0], 0.95, "within noise"),  # one round short of the goal: not met on rounds not measured
])
def test_serving_overhead_judges_the_rounds_against_the_90_percent_goal(monkeypatch, tmp_path, served_fps, ratio,
                                                                        expected):
    """make bench-serving's (b)/(a): with in-process at 100 frames/s each round and known served
    throughputs, the ratio is the median of the rounds' ratios and the verdict follows the goal."""
    from contextlib import nullcontext
    from types import SimpleNamespace

    from loadtest import serving_bench

    throughputs = iter([120.0, *served_fps])  # the one-concurrency sweep, then one run per round
    monkeypatch.setattr(serving_bench, "input_data", lambda images, path: path)
    monkeypatch.setattr(serving_bench, "TritonServer", lambda *a, **k: nullcontext(SimpleNamespace(metrics_url="")))
    monkeypatch.setattr(serving_bench, "RepositoryRecord", SimpleNamespace(load=lambda repo: SimpleNamespace(settings=None)))
    monkeypatch.setattr(serving_bench, "replace", lambda settings, **changes: settings)
    monkeypatch.setattr(serving_bench, "apply", lambda server, settings: None)
    monkeypatch.setattr(serving_bench, "MetricsRecorder", lambda url: nullcontext())
    monkeypatch.setattr(serving_bench, "combined_summary", lambda recorders: {"models": {}})
    monkeypatch.setattr(serving_bench, "run_perf_analyzer",
                        lambda *a, **k: {"throughput_fps": next(throughputs)})
    pipeline = SimpleNamespace(fps=lambda seconds: 100.0)
    result = serving_bench.serving_overhead(tmp_path, [], pipeline, tmp_path, concurrencies=(8,),
                                            rounds_count=3, window_ms=1, in_process_seconds=0)
    assert [r["ratio"] for r in result["rounds"]] == [f / 100 for f in served_fps]
    assert result["ratio"] == ratio and result["verdict"] == expected
    assert result["in_process_fps"] == 100.0 and result["served_fps"] == sorted(served_fps)[1]


def test_soak_memory_growth_compares_the_first_and_last_tenth_after_warm_up():
    from loadtest.soak import memory_growth

    # 40 samples a second apart: a 10 s warm-up at 500 MB is left out; after it the server sits
    # at 100 MB for three samples (the first tenth), then its last three samples are 120 MB
    samples = [(t, {"tritonserver": 500.0, "detector": 50.0}) for t in range(10)]
    samples += [(t, {"tritonserver": 100.0, "detector": 50.0}) for t in range(10, 37)]
    samples += [(t, {"tritonserver": 120.0, "detector": 50.0}) for t in range(37, 40)]
    growth = memory_growth(samples, warmup_s=10)
    assert growth["tritonserver"] == {"start_mb": 100.0, "end_mb": 120.0, "growth": 0.2}
    assert growth["detector"] == {"start_mb": 50.0, "end_mb": 50.0, "growth": 0.0}
    assert growth["total"] == {"start_mb": 150.0, "end_mb": 170.0, "growth": 0.1333}


def test_the_same_model_naive_repository_serves_the_file_the_repository_was_built_from(tmp_path):
    """bench-serving's like-for-like row: the served repository's own gated file, refused once changed."""
    from compress.errors import InputFileError
    from compress.manifest import file_hash
    from tools import triton_config as tc
    from tools.repository import RepositoryRecord

    model = tmp_path / "int8.onnx"
    model.write_bytes(b"gated model bytes")
    repo = tmp_path / "repo"
    repo.mkdir()
    RepositoryRecord(repo, "relu_1x", "local", model, True, file_hash(model), "0" * 16,
                     tc.RepositorySettings(image_size=(256, 256), num_classes=3)).save()
    record = RepositoryRecord.load(repo)
    assert (record.stage, record.source_unchanged()) == ("relu_1x", model)
    model.write_bytes(b"another model")
    with pytest.raises(InputFileError, match="changed since the repository was built"):
        record.source_unchanged()


def test_a_sampler_outlives_a_sample_that_raises():
    """A scrape cut short (any exception, not only OSError) is counted and the sampling goes on."""
    from tools.periodic import PeriodicSampler

    class Flaky(PeriodicSampler):
        calls = 0

        def sample(self):
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise ValueError("a truncated /metrics page")
            return Flaky.calls

    sampler = Flaky(interval_s=0.01)
    for _ in range(3):
        sampler._take()
    assert [value for _, value in sampler.samples] == [2, 3]
    assert sampler.errors == 1 and sampler.last_error == "ValueError: a truncated /metrics page"


def test_the_watch_summary_says_how_many_scrapes_failed():
    from tools.watch import ShadowWatch

    watch = ShadowWatch("http://127.0.0.1:9/metrics", interval_s=0.01)  # nothing listens there
    watch._take()
    watch._take()
    summary = watch.summary()
    assert summary["sampling_errors"]["count"] == 2 and "URLError" in summary["sampling_errors"]["last"]


def test_an_alarm_evaluation_that_fails_is_counted_and_the_watch_goes_on(monkeypatch):
    from tools import alerts, watch as watch_module

    class Fed(watch_module.ShadowWatch):
        def sample(self):
            return {"yolo_frames_total": float(len(self.samples))}

    real_firing = alerts.firing
    calls = []

    def firing_once_broken(samples):
        calls.append(len(samples))
        if len(calls) == 1:
            raise KeyError("yolo_detections_total")
        return [{"alert": "Stand-in", "firing": True}] + real_firing(samples)

    monkeypatch.setattr(watch_module.alerts, "firing", firing_once_broken)
    watch = Fed("http://unused/metrics", interval_s=0.01)
    for _ in range(4):
        watch._take()
    assert len(watch.samples) == 4 and calls == [2, 3, 4]  # evaluated again after the failure
    summary = watch.summary()
    assert summary["sampling_errors"]["count"] == 1 and summary["sampling_errors"]["last"].startswith("alarms: KeyError")
    assert list(watch.fired) == ["Stand-in"]  # the next evaluation's alarms still recorded
