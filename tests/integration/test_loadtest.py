"""Locust camera streams against the real server: summary, metrics, open loop, distributed mode."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2 as mc

from loadtest.run import LoadSpec, load_test
from tests.conftest import ROOT
from tools import triton_config as tc
from tools.server import TritonServer

pytestmark = pytest.mark.integration


def run(triton, tmp_path, val_images, **spec):
    images = val_images[0].parent
    url = triton.grpc_url if spec.get("protocol", "grpc") == "grpc" else triton.http_url
    return load_test(LoadSpec(**spec), tmp_path / "out", url=url, metrics_url=triton.metrics_url, images=images)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_short_run_produces_a_full_summary(triton, tmp_path, val_images, protocol):
    summary = run(triton, tmp_path, val_images, streams=2, fps=5, duration_s=4, protocol=protocol)
    frames = summary["frames"]
    assert frames["frames_due"] == 2 * 5 * 4
    assert frames["frames_ok"] > 0 and frames["errors"] == 0
    assert frames["latency_ms"]["p50"] > 0
    models = summary["triton"]["models"]
    assert models["detector"]["requests"] >= frames["frames_ok"] and models["detector"]["avg_batch_size"] >= 1
    assert summary["triton"]["bottleneck"] in {"preprocess", "detector", "postprocess"}
    out = tmp_path / "out"
    for name in ("summary.json", "summary.md", "locust_stats.csv", "locust.html", "latency_over_time.png"):
        assert (out / name).stat().st_size > 0, name


def test_distributed_mode_with_one_worker(triton, tmp_path, val_images):
    summary = run(triton, tmp_path, val_images, streams=2, fps=5, duration_s=4, workers=1)
    assert summary["frames"]["frames_due"] == 40 and summary["frames"]["errors"] == 0


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("slow_repo")
    shutil.copytree(ROOT / "tests" / "fixtures" / "slow_model", repo / "slow")
    config = mc.ModelConfig(
        name="slow", backend="python", max_batch_size=4,
        input=[mc.ModelInput(name="IMAGE", data_type=mc.TYPE_STRING, dims=[1])],
        output=[mc.ModelOutput(name=n, data_type=t, dims=d) for n, t, d in tc.DETECTION_OUTPUTS],
        instance_group=[mc.ModelInstanceGroup(count=1, kind=mc.ModelInstanceGroup.KIND_CPU)])
    config.parameters["delay_ms"].string_value = "250"
    tc.write_config(config, repo / "slow")
    with TritonServer(repo, models=("slow",), log_path=repo / "server.log") as server:
        yield server


def test_open_loop_shows_growing_latency_and_drops_not_a_lower_send_rate(slow_server, tmp_path, val_images):
    # 2 streams x 10 FPS offered to a server that answers 4 frames/s.
    summary = load_test(LoadSpec(streams=2, fps=10, duration_s=6, model="slow", max_in_flight=3), tmp_path / "out",
                        url=slow_server.grpc_url, metrics_url=slow_server.metrics_url, images=val_images[0].parent)
    frames = summary["frames"]
    assert frames["frames_due"] == 2 * 10 * 6  # the schedule kept its rate
    assert frames["dropped"] > frames["frames_due"] / 2
    assert frames["late_over_interval"] == frames["frames_ok"]  # every answered frame was late
    import json

    records = json.loads((tmp_path / "out" / "frames.json").read_text())
    ok = sorted((r["due"], r["latency_ms"]) for r in records if r["status"] == "ok")
    latencies = np.array([lat for _, lat in ok])
    third = len(latencies) // 3
    assert latencies[-third:].mean() > latencies[:third].mean() + 100  # latency from due time grows
