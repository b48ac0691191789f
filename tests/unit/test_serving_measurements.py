"""Camera-sized frame sets, per-size capacity records, and reading Triton, perf_analyzer and shed causes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from compress.dataset import FRAME_SIZES, DatasetSpec, generate
from compress.errors import InputFileError
from loadtest.burst import burst_summary
from tools.capacity_plan import capacity_for
from loadtest.frame_sets import describe, resolve_frames
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
