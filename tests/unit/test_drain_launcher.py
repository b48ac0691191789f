"""The launcher's readiness endpoint and its bad-input errors, without a Triton server: the endpoint
must say "not ready" while Triton is not up (starting, gone) and "draining" once a stop began."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.error

import pytest

from tests.conftest import ROOT
from tools.drain import LOOPBACK_OPENER, ReadinessFront
from tools.server import LOOPBACK, free_port


def get(url: str) -> tuple[int, str]:
    try:
        with LOOPBACK_OPENER.open(url, timeout=5) as response:
            return response.status, response.read().decode().strip()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode().strip()


def test_readiness_follows_triton_and_the_drain():
    nothing_there = f"{LOOPBACK}:{free_port()}"  # Triton still loading models, or gone
    with ReadinessFront(nothing_there, LOOPBACK, 0) as front:
        front.start_being_ready()
        assert get(f"{front.url}/ready") == (503, "not ready")
        assert get(f"{front.url}/live")[0] == 503
        front.stop_being_ready()
        assert get(f"{front.url}/ready") == (503, "draining")
        assert get(f"{front.url}/elsewhere")[0] == 404
        assert front.checked == 2  # /ready asked twice: a balancer is watching, the drain will wait for it


def launcher(*args: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.server", "local", "--repo", str(tmp_path), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_a_taken_readiness_port_fails_before_triton_starts(tmp_path):
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        done = launcher("--ready-port", str(taken.getsockname()[1]), tmp_path=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("error: cannot serve readiness") and "--ready-port" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("flag", ["--grace", "--drain-max-wait", "--drain-quiet"])
def test_negative_drain_times_are_refused(flag, tmp_path):
    done = launcher(flag, "-1", tmp_path=tmp_path)
    assert done.returncode == 2 and done.stderr.strip() == f"error: {flag} must be 0 or more, not -1.0"


def test_free_ports_are_never_handed_out_twice():
    """Servers take three or four ports from back-to-back calls; the kernel alone repeats them."""
    ports = [free_port() for _ in range(1000)]
    assert len(set(ports)) == len(ports)


def test_activity_is_read_from_triton_metrics_text():
    """Pending summed over models and versions; activity sums the request and execution counters only."""
    from tools.drain import triton_activity

    text = "\n".join([
        "# HELP nv_inference_pending_request_count Instantaneous number of pending requests",
        "# TYPE nv_inference_pending_request_count gauge",
        'nv_inference_pending_request_count{model="detector",version="1"} 3',
        'nv_inference_pending_request_count{model="preprocess",version="1"} 2',
        "# HELP nv_inference_request_success Number of successful inference requests",
        "# TYPE nv_inference_request_success counter",
        'nv_inference_request_success{model="yolo",version="1"} 40',
        'nv_inference_request_success{model="detector",version="1"} 40',
        "# HELP nv_inference_exec_count Number of model executions",
        "# TYPE nv_inference_exec_count counter",
        'nv_inference_exec_count{model="detector",version="1"} 7',
        "# HELP nv_inference_queue_duration_us Cumulative queue time",
        "# TYPE nv_inference_queue_duration_us counter",
        'nv_inference_queue_duration_us{model="detector",version="1"} 123456',
        ""])
    assert triton_activity(text) == (5, 87.0)
