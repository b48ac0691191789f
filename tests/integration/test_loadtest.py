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
    from loadtest.metrics import scrape

    before = scrape(triton.metrics_url)  # nothing else sends to the server during this test
    summary = run(triton, tmp_path, val_images, streams=2, fps=5, duration_s=4, protocol=protocol)
    after = scrape(triton.metrics_url)
    frames = summary["frames"]
    assert frames["frames_due"] == 2 * 5 * 4
    assert frames["frames_ok"] > 0 and frames["errors"] == 0
    assert frames["latency_ms"]["p50"] > 0
    models = summary["triton"]["models"]

    def increase(model, counter):
        return after[model][counter] - before.get(model, {}).get(counter, 0.0)

    # the summary's per-model figures are Triton's own counters over the run
    # every answered frame is one ensemble request
    assert models["yolo"]["requests"] == increase("yolo", "nv_inference_request_success") == frames["frames_ok"]
    assert models["detector"]["requests"] == increase("detector", "nv_inference_request_success")
    batch = increase("detector", "nv_inference_count") / increase("detector", "nv_inference_exec_count")
    assert models["detector"]["avg_batch_size"] == pytest.approx(batch, abs=0.005)
    # the bottleneck is the step whose requests spend the most time in it (queue + compute)
    steps = {name: models[name]["queue_ms_per_request"] + models[name]["compute_ms_per_request"]
             for name in ("preprocess", "detector", "postprocess")}
    assert summary["triton"]["bottleneck"] == max(steps, key=steps.get), steps
    out = tmp_path / "out"
    for name in ("summary.json", "summary.md", "locust_stats.csv", "locust.html", "latency_over_time.png"):
        assert (out / name).stat().st_size > 0, name


def test_distributed_mode_streams_are_distinct_across_workers(triton, tmp_path, val_images):
    """Two worker processes, four cameras: four distinct stream ids (ids pick phases and endpoints)."""
    import json

    summary = run(triton, tmp_path, val_images, streams=4, fps=5, duration_s=4, workers=2)
    assert summary["frames"]["frames_due"] == 80 and summary["frames"]["errors"] == 0
    frames = json.loads((tmp_path / "out" / "frames.json").read_text())
    first_due = {}
    for frame in frames:
        first_due[frame["stream"]] = min(first_due.get(frame["stream"], frame["due"]), frame["due"])
    assert sorted(first_due) == [0, 1, 2, 3]
    # each id is one camera's 20 frames (a per-process counter would give two cameras one id and one phase)
    assert all(sum(f["stream"] == stream for f in frames) == 20 for stream in first_due)


def slow_config(name: str, shed_after_us: int = 0) -> mc.ModelConfig:
    config = mc.ModelConfig(
        name=name, backend="python", max_batch_size=4,
        input=[mc.ModelInput(name="IMAGE", data_type=mc.TYPE_STRING, dims=[1])],
        output=[mc.ModelOutput(name=n, data_type=t, dims=d) for n, t, d in tc.DETECTION_OUTPUTS],
        instance_group=[mc.ModelInstanceGroup(count=1, kind=mc.ModelInstanceGroup.KIND_CPU)])
    config.parameters["delay_ms"].string_value = "250"
    if shed_after_us:  # the repository's overload policy: bounded queue, timeout, reject
        config.dynamic_batching.default_queue_policy.CopyFrom(mc.ModelQueuePolicy(
            timeout_action=mc.ModelQueuePolicy.REJECT, default_timeout_microseconds=shed_after_us, max_queue_size=2))
    return config


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory):
    """Two stand-ins answering 4 requests/s: `slow` queues without bound, `slow_shedding` rejects."""
    repo = tmp_path_factory.mktemp("slow_repo")
    for config in (slow_config("slow"), slow_config("slow_shedding", shed_after_us=300_000)):
        shutil.copytree(ROOT / "tests" / "fixtures" / "slow_model", repo / config.name)
        tc.write_config(config, repo / config.name)
    with TritonServer(repo, models=("slow", "slow_shedding"), log_path=repo / "server.log") as server:
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


def test_queue_policy_sheds_overload_as_counted_rejections(slow_server, tmp_path, val_images):
    """At 5x capacity a bounded, rejecting queue answers fast refusals instead of ever-later frames."""
    runs = {}
    for model in ("slow", "slow_shedding"):
        runs[model] = load_test(LoadSpec(streams=2, fps=10, duration_s=6, model=model, max_in_flight=3),
                                tmp_path / model, url=slow_server.grpc_url, metrics_url=slow_server.metrics_url,
                                images=val_images[0].parent)["frames"]
    unbounded, shedding = runs["slow"], runs["slow_shedding"]
    assert unbounded["rejected"] == 0 and unbounded["errors"] == 0
    assert shedding["rejected"] > 0 and shedding["errors"] == 0  # rejections are not counted as errors
    assert shedding["frames_ok"] > 0
    # every shed frame is counted under Triton's own cause (queue full or queue timeout), none unexplained
    causes = shedding["rejected_by_cause"]
    assert sum(causes.values()) == shedding["rejected"] and causes["other"] == 0, causes
    # frames the shedding server accepted wait less than those of the server that queues everything
    assert shedding["latency_ms"]["p99"] < unbounded["latency_ms"]["p99"]
    assert "rejected by the server" in (tmp_path / "slow_shedding" / "summary.md").read_text()


def test_short_soak_reports_memory_of_the_server_and_every_stub(served_repo, tmp_path, val_images):
    """`make soak`'s CLI, briefly: RSS of tritonserver and each Python stub over time, no errors."""
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "soak"
    command = [sys.executable, "-m", "loadtest.soak", "--streams", "2", "--fps", "5", "--duration", "12s",
               "--sample-s", "0.5", "--warmup-s", "2", "--repo", str(served_repo), "--images",
               str(val_images[0].parent), "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "soak.json").read_text())
    assert result["frames"]["errors"] == 0 and result["frames"]["frames_ok"] > 0
    # the served repository runs two detector instances: each stub is a row of its own
    assert {"tritonserver", "preprocess", "detector", "detector #2", "postprocess", "total"} <= set(result["memory"])
    assert all(m["start_mb"] > 1 for m in result["memory"].values())
    assert result["samples"] == len(result["rss_mb"]) >= 10

    # growth: median total RSS of the first and of the last tenth of the samples after the warm-up
    # (a sample within 0.1 s of the warm-up's end may fall either side: its time is rounded)
    def first_and_last(warmup_s):
        totals = [sum(v for k, v in sample.items() if k != "t") for sample in result["rss_mb"]
                  if sample["t"] >= warmup_s]
        tenth = max(1, len(totals) // 10)
        return round(float(np.median(totals[:tenth])), 1), round(float(np.median(totals[-tenth:])), 1)

    total = result["memory"]["total"]
    assert (total["start_mb"], total["end_mb"]) in {first_and_last(result["warmup_s"] + d) for d in (-0.1, 0, 0.1)}
    assert total["growth"] == pytest.approx(total["end_mb"] / total["start_mb"] - 1, abs=1e-3)
    # the verdict follows the goal: growth under it, and nothing failed or lost
    from loadtest.soak import GROWTH_GOAL

    frames = result["frames"]
    assert result["goal_met"] == (total["growth"] < GROWTH_GOAL and frames["errors"] == 0 and frames["lost"] == 0)
    markdown = (out / "soak.md").read_text()
    assert f"**{total['growth']:+.1%}** (goal < {GROWTH_GOAL:.0%}: {'met' if result['goal_met'] else 'missed'})" in markdown
    assert (out / "rss_over_time.png").stat().st_size > 0


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_streams_survive_a_replica_killed_mid_run(served_repo, tmp_path, val_images, protocol):
    """Two replicas on loopback, streams spread over both; one is killed (SIGKILL) mid-run: the run
    finishes, the frames that died with it are counted as lost, and its streams carry on on the other."""
    import json
    import threading
    import time

    replicas = [TritonServer(served_repo, log_path=tmp_path / f"replica_{i}.log").start() for i in range(2)]
    url = lambda s: s.grpc_url if protocol == "grpc" else s.http_url  # noqa: E731
    try:
        spec = LoadSpec(streams=4, fps=5, duration_s=12, protocol=protocol)
        outcome = {}
        run_thread = threading.Thread(target=lambda: outcome.update(summary=load_test(
            spec, tmp_path / "out", url=",".join(url(s) for s in replicas),
            metrics_url=",".join(s.metrics_url for s in replicas), images=val_images[0].parent)))
        run_thread.start()
        time.sleep(9)  # Locust starts in a few seconds; the kill lands mid-schedule
        killed_at = time.time()
        replicas[1].process.kill()
        run_thread.join(timeout=180)
        assert not run_thread.is_alive(), "the load test hung after a replica died"
    finally:
        for server in replicas:
            server.stop()
    frames = outcome["summary"]["frames"]
    assert frames["lost"] > 0, "nothing was lost with the killed replica: the kill was not exercised"
    accounted = frames["frames_ok"] + frames["lost"] + frames["errors"] + frames["dropped"] + frames["rejected"]
    assert accounted == frames["frames_due"] == 4 * 5 * 12
    assert frames["errors"] == 0 and frames["rejected"] == 0
    records = json.loads((tmp_path / "out" / "frames.json").read_text())
    survivor, dead = url(replicas[0]), url(replicas[1])
    assert {r["endpoint"] for r in records if "endpoint" in r} == {survivor, dead}
    moved = {r["stream"] for r in records if r.get("endpoint") == dead}
    after = [r for r in records if r["stream"] in moved and r["due"] > killed_at + 1]
    assert after and all(r["endpoint"] == survivor for r in after if r["status"] != "dropped")
    assert sum(r["status"] == "ok" for r in after) >= 0.9 * len(after), "the moved streams did not recover"
    assert not [r for r in records if r["status"] == "lost" and r["due"] > killed_at + 2]
    assert (tmp_path / "out" / "summary.md").read_text().count(dead) == 1  # the per-endpoint table


def locust_master_heartbeat_timeout_s() -> int:
    """Locust's MASTER_HEARTBEAT_TIMEOUT, read from its source: importing locust here would
    monkey-patch this process with gevent, which can deadlock against the master running in a thread)."""
    import importlib.util
    import re
    from pathlib import Path

    source = Path(importlib.util.find_spec("locust").origin).with_name("runners.py").read_text()
    return int(re.search(r"^MASTER_HEARTBEAT_TIMEOUT = (\d+)", source, re.M).group(1))


def test_remote_workers_take_their_options_from_the_master(triton, tmp_path, val_images):
    """The Kubernetes shape on loopback: `loadtest.run --remote-workers 1` runs only the master; a
    worker started the way deploy/k8s/loadtest starts it (no load-test options of its own) gets
    fps, frames and endpoints from the master, and the master writes the usual summary."""
    import subprocess
    import sys
    import threading

    from tools.server import free_port

    port = free_port()
    spec = LoadSpec(streams=2, fps=5, duration_s=4, remote_workers=1, master_port=port)
    outcome = {}
    master = threading.Thread(target=lambda: outcome.update(summary=load_test(
        spec, tmp_path / "out", url=triton.grpc_url, metrics_url=triton.metrics_url, images=val_images[0].parent)))
    master.start()
    worker = subprocess.Popen([sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest" / "locustfile.py"),
                               "--worker", "--master-host", "127.0.0.1", "--master-port", str(port),
                               "--loglevel", "WARNING"], cwd=ROOT)
    try:
        master.join(timeout=180)
        assert not master.is_alive(), "the master never finished"
    finally:
        try:
            # A worker quits on its master's quit message, or, when that message is lost as the
            # master exits (a loaded machine can lose it), once the master's heartbeat has been
            # missing for Locust's MASTER_HEARTBEAT_TIMEOUT: either way it must not outlive it.
            worker.wait(timeout=locust_master_heartbeat_timeout_s() + 20)
        except subprocess.TimeoutExpired:
            worker.kill()
            raise
    frames = outcome["summary"]["frames"]
    assert frames["frames_due"] == 2 * 5 * 4 and frames["frames_ok"] > 0 and frames["errors"] == 0
    assert set(frames["by_endpoint"]) == {triton.grpc_url}
