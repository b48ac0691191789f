"""Rollouts behind a real load balancer: two replicas of the tiny served repository, each behind
the drain launcher, HAProxy (the Debian package) in front, the Locust camera streams through it.

- A rolling restart (drain + restart one replica, wait until the balancer routes to it, then
  the other) answers every frame.
- A replica killed with SIGKILL (no drain possible) costs at most the frames it had in flight,
  the balancer marks it down within its check window (measured), and routes nothing to it after.
- The Kubernetes preStop hook and readiness probe, taken from the Deployment, drive a real server.

Small on purpose (2-core CI): a few low-rate streams, short steady and settle windows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

pytestmark = pytest.mark.integration



@pytest.fixture(scope="module")
def cluster(served_repo, tmp_path_factory):
    from tools.haproxy import HealthCheck
    from tools.rollout import Cluster

    with Cluster(served_repo, tmp_path_factory.mktemp("cluster"), count=2,
                 check=HealthCheck(inter_ms=500, fall=2, rise=2, timeout_ms=400)) as running:
        yield running


@pytest.fixture(scope="module")
def frame_set(val_images):
    from tools.frame_sets import describe

    return describe("dataset", val_images[0].parent)


def load(streams: int = 3, fps: float = 4.0):
    from loadtest.run import LoadSpec

    # a camera keeps up to 8 frames pending: a restart's CPU spike on 2 cores delays, never drops
    return LoadSpec(streams=streams, fps=fps, protocol="grpc", max_in_flight=8)


def not_ok(out: Path) -> list[dict]:
    return [f for f in json.loads((out / "frames.json").read_text()) if f["status"] != "ok"]


def test_rolling_restart_behind_haproxy_answers_every_frame(cluster, frame_set, tmp_path):
    from loadtest.rollout import run_rollout

    cluster.ensure_all_running()
    result = run_rollout(cluster, load(), frame_set, tmp_path, phases=("rolling",), steady_s=2.0, settle_s=2.0,
                         margin=1.1)
    assert not result["phases_without_load"], result["events"]
    rows = {row["window"]: row for row in result["windows"]}
    assert rows["rolling restart"]["frames"] >= 20, "too little load during the restart to mean anything"
    failed = not_ok(tmp_path)
    assert not failed, f"{len(failed)} of {result['frames_total']} frames not answered: {failed[:3]}"
    for name, restart in result["record"]["rolling"].items():
        assert restart["exit_code"] == 0, f"{name} did not drain cleanly: {restart}"
    # both replicas were restarted and both serve again afterwards
    assert all(count > 0 for count in rows["after rolling"]["by_replica"].values()), rows["after rolling"]
    assert rows["rolling restart"]["no_replica"] == 0


def test_sigkill_costs_at_most_the_frames_in_flight_and_is_routed_around(cluster, frame_set, tmp_path):
    from loadtest.rollout import CHECK_MARGIN_S, run_rollout

    cluster.ensure_all_running()
    result = run_rollout(cluster, load(streams=3, fps=6.0), frame_set, tmp_path, phases=("sigkill",), steady_s=2.0,
                         settle_s=1.0, margin=1.1)
    kill = result["sigkill"]
    bound_s = cluster.check.inter_ms * cluster.check.fall / 1e3 + cluster.check.timeout_ms / 1e3 + CHECK_MARGIN_S
    # measured: the balancer's own view, polled every 50 ms from the moment of the kill
    assert kill["marked_down_after_s"] <= bound_s, kill
    # the last frame HAProxy sent to the dead replica (and then redispatched) left within the window
    assert kill["last_sent_to_dead_s"] is None or kill["last_sent_to_dead_s"] <= bound_s, kill
    # every frame that was not answered, over the whole run, is one the killed replica held
    failed = not_ok(tmp_path)
    assert len(failed) <= kill["in_flight_at_kill"], (
        f"{len(failed)} frames failed but {kill['in_flight_at_kill']} were in flight on {kill['victim']}: {failed[:3]}")
    assert kill["frames_failed"] == len(failed)
    rows = {row["window"]: row for row in result["windows"]}
    assert rows[f"sigkill {kill['victim']}"]["frames"] > 0, "no load while the balancer had not noticed yet"
    assert rows["after sigkill"]["by_replica"][kill["victim"]] > 0, "the restarted replica got no frames"


def test_a_killed_stub_is_routed_around_and_healed_without_a_restart(cluster, frame_set, tmp_path):
    from loadtest.rollout import run_rollout

    cluster.ensure_all_running()
    result = run_rollout(cluster, load(streams=3, fps=6.0), frame_set, tmp_path, phases=("stub-kill",), steady_s=2.0,
                         settle_s=2.0, margin=1.1)
    kill = result["stub-kill"]
    assert kill["not_ready_after_s"] is not None and kill["not_ready_after_s"] <= 2.0, kill  # the launcher saw it
    assert kill["healed_after_s"] is not None and kill["healed_after_s"] <= 10, kill
    assert kill["restarts"] == 0 and kill["same_triton"], kill  # reloaded in place: the same tritonserver
    failed = not_ok(tmp_path)
    # every frame lost over the whole run is one the victim held or was sent before the balancer
    # could know (one probe interval), none after it routed away
    assert len(failed) == kill["frames_failed"] <= kill["bound_frames"], (kill, failed[:3])
    assert kill["failed_after_routed_away"] == 0, kill
    rows = {row["window"]: row for row in result["windows"]}
    assert rows["after stub-kill"]["by_replica"][kill["victim"]] > 0, "the healed replica got no frames"
    goals = result["goals"]
    assert goals["stub_kill_healed_within_10s_without_restart"]["met"], goals


def test_kubernetes_probes_fail_while_a_stub_is_dead(served_repo, tmp_path):
    """The Deployment's readiness and liveness commands against a real server whose preprocess
    stub was killed: both fail (no launcher heals in the pod: the kubelet restarts it). The server
    restricts its operator APIs as the pod does: the probes read the admin key from its file."""
    import psutil

    from tools.server import TritonServer

    container = deployment_container()
    env = {**os.environ, **{e["name"]: e["value"] for e in container["env"]}, "DRAIN_FILE": str(tmp_path / "draining"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def probe(kind: str) -> list[str]:
        return [part.replace("/opt/yolo-triton/stub_health.py", str(ROOT / "tools" / "stub_health.py"))
                .replace("http://127.0.0.1:8000", env["TRITON_HTTP_URL"]) for part in container[kind]["exec"]["command"]]

    import shutil

    repo = shutil.copytree(served_repo, tmp_path / "repo")  # stubs of its own: other servers serve served_repo
    key = tmp_path / "admin-key"
    key.write_text("s3cret\n")
    with TritonServer(repo, log_path=tmp_path / "server.log", admin_key="s3cret") as server:
        env.update(TRITON_HTTP_URL=f"http://{server.http_url}", DRAIN_READY_URL=f"http://{server.http_url}/v2/health/ready",
                   MODEL_REPOSITORY=str(server.repository), ADMIN_KEY_FILE=str(key))
        env.pop("TRITON_ADMIN_KEY", None)
        for kind in ("readinessProbe", "livenessProbe"):
            assert subprocess.run(probe(kind), env=env, timeout=30).returncode == 0, kind
        for child in psutil.Process(server.process.pid).children():
            if child.cmdline()[-2:-1] == ["preprocess_0_0"]:
                child.kill()
        time.sleep(0.5)
        for kind in ("readinessProbe", "livenessProbe"):
            done = subprocess.run(probe(kind), env=env, timeout=30, capture_output=True, text=True)
            assert done.returncode != 0 and "no live stub for preprocess_0_0" in done.stderr, (kind, done.stderr)


def deployment_container() -> dict:
    deployment = yaml.safe_load((ROOT / "deploy" / "k8s" / "base" / "deployment.yaml").read_text())
    return deployment["spec"]["template"]["spec"]["containers"][0]


def test_kubernetes_prestop_and_readiness_probe_drive_a_real_server(triton, tmp_path, val_images):
    """The Deployment's own commands, run here against the real server: the probe passes, the hook
    turns it not-ready, waits while requests keep arriving and returns once Triton is idle."""
    from tools.client import TritonDetectorClient

    container = deployment_container()
    env = {**os.environ, **{e["name"]: e["value"] for e in container["env"]},
           "DRAIN_FILE": str(tmp_path / "draining"), "DRAIN_GRACE_SECONDS": "0.2", "DRAIN_QUIET_SECONDS": "0.5",
           "DRAIN_READY_URL": f"http://{triton.http_url}/v2/health/ready", "DRAIN_METRICS_URL": triton.metrics_url,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    # the image's stub check is tools/stub_health.py; the fixture's server serves its own repository
    probe = [part.replace("/opt/yolo-triton/stub_health.py", str(ROOT / "tools" / "stub_health.py"))
             for part in container["readinessProbe"]["exec"]["command"]]
    env.update(TRITON_HTTP_URL=f"http://{triton.http_url}", MODEL_REPOSITORY=str(triton.repository))
    assert subprocess.run(probe, env=env, timeout=30).returncode == 0

    finished: list[float] = []
    stop = threading.Event()

    def send():  # back to back until told to stop, as a balancer that has not noticed yet
        with TritonDetectorClient(triton.grpc_url, "grpc", timeout_s=30) as client:
            while not stop.is_set():
                client.detect([val_images[0].read_bytes()])
                finished.append(time.monotonic())

    sender = threading.Thread(target=send)
    sender.start()
    returned: list[float] = []
    try:
        hook = subprocess.Popen(container["lifecycle"]["preStop"]["exec"]["command"], env=env)
        watcher = threading.Thread(target=lambda: (hook.wait(), returned.append(time.monotonic())))
        watcher.start()
        time.sleep(1.5)  # well past the hook's grace: only the idle wait holds it now
        assert hook.poll() is None, "the preStop hook returned while requests were still arriving"
    finally:
        stop.set()
        sender.join(timeout=60)
    watcher.join(timeout=30)
    assert hook.returncode == 0 and finished and returned
    # the hook returned only after the last request ended and a quiet window without any had passed
    assert returned[0] - max(finished) >= 0.8 * float(env["DRAIN_QUIET_SECONDS"]), (returned[0], max(finished))
    assert (tmp_path / "draining").exists()
    assert subprocess.run(probe, env=env, timeout=30).returncode != 0  # not ready: endpoints drop the pod
    assert triton.is_ready()  # the hook never stops Triton: the kubelet's SIGTERM does, afterwards
