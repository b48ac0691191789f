"""Nothing outlives the program that started the server: SIGTERM, SIGKILL, and a load test killed mid-run.

Each test runs the real launcher (`python -m tools.server local`, what `make serve` runs) or a
real CLI as a subprocess, signals it, then checks the process tree (tritonserver and its Python
stubs) is gone and the ports are free.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT
from tools.server import LOOPBACK, free_port

pytestmark = pytest.mark.integration


def start(command: list[str], ready_text: str, log: Path, timeout_s: float = 90) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    # SIGINT as a terminal's Ctrl-C delivers it: a shell starts background jobs (`make test &`)
    # with SIGINT ignored, children inherit that, and Python then never raises KeyboardInterrupt
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + timeout_s
    while ready_text not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"{command[2]} did not get ready: {log.read_text()[-2000:]}")
        time.sleep(0.2)
    return process


def server_tree(process: subprocess.Popen) -> list[psutil.Process]:
    """The launcher's descendants: tritonserver and the Python backend stubs (and Locust, if any)."""
    tree = psutil.Process(process.pid).children(recursive=True)
    names = " ".join(p.name() for p in tree)
    assert "tritonserver" in names and "triton_python_backend_stub" in names, names
    return tree


def assert_gone(tree: list[psutil.Process], ports: list[int], timeout_s: float = 30) -> None:
    _, alive = psutil.wait_procs(tree, timeout=timeout_s)
    assert not alive, f"left running: {[(p.pid, p.name()) for p in alive]}"
    for port in ports:
        with socket.socket() as sock:
            # as a new server binds: TIME_WAIT leftovers are fine, a listener is not
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((LOOPBACK, port))


def launcher(served_repo: Path, tmp_path: Path) -> tuple[subprocess.Popen, list[int]]:
    ports = [free_port() for _ in range(4)]
    command = [sys.executable, "-m", "tools.server", "local", "--repo", str(served_repo), "--http-port", str(ports[0]),
               "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]), "--ready-port", str(ports[3]),
               "--grace", "0", "--log", str(tmp_path / "server.log")]
    return start(command, "Triton ready", tmp_path / "launcher.log"), ports


def readiness(port: int, path: str) -> tuple[int, str]:
    import urllib.error

    from tools.drain import LOOPBACK_OPENER

    try:
        with LOOPBACK_OPENER.open(f"http://{LOOPBACK}:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode().strip()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode().strip()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_launcher_forwards_the_signal_and_exits_with_the_server_code(served_repo, tmp_path, signum):
    process, ports = launcher(served_repo, tmp_path)
    tree = server_tree(process)
    # the launcher says ready once its models are loaded, and live
    assert readiness(ports[3], "/ready") == (200, "ready") and readiness(ports[3], "/live") == (200, "live")
    process.send_signal(signum)
    assert process.wait(timeout=40) == 0  # Triton drained and exited 0; the launcher passes that on
    assert_gone(tree, ports)
    assert f"tritonserver stopped ({signal.Signals(signum).name}, exit 0)" in (tmp_path / "launcher.log").read_text()


def test_server_does_not_outlive_a_killed_launcher(served_repo, tmp_path):
    process, ports = launcher(served_repo, tmp_path)
    tree = server_tree(process)
    process.kill()  # SIGKILL: no handler runs; the parent-death signal must stop the server
    process.wait(timeout=10)
    assert_gone(tree, ports)


def test_load_test_killed_mid_run_leaves_nothing_listening(served_repo, tmp_path, val_images):
    """A CLI that starts its own server (here `make loadtest`'s) unwinds on SIGTERM: server, stubs, Locust."""
    command = [sys.executable, "-m", "loadtest.run", "--repo", str(served_repo), "--images", str(val_images[0].parent),
               "--streams", "2", "--fps", "5", "--duration", "120s", "--out", str(tmp_path / "load")]
    process = start(command, "streams x", tmp_path / "loadtest.log")
    time.sleep(3)  # Locust is sending frames now
    tree = server_tree(process)
    assert any("locust" in " ".join(p.cmdline()) for p in tree)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 128 + signal.SIGTERM
    assert_gone(tree, [])
    assert "stopped by SIGTERM" in (tmp_path / "loadtest.log").read_text()


def kill_stub(process: subprocess.Popen, instance: str) -> None:
    for child in psutil.Process(process.pid).children(recursive=True):
        try:
            if child.cmdline()[-2] == instance:
                child.kill()
                return
        except (psutil.Error, IndexError):
            continue
    pytest.fail(f"no stub {instance}")


def wait_for(condition, timeout_s: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if condition():
            return time.monotonic() - started
        time.sleep(0.02)
    return None


def test_a_dead_stub_of_every_step_turns_ready_off_and_heals(served_repo, tmp_path, val_images):
    """`make serve` with each step's stub killed in turn (SIGKILL, as the OOM killer does): /ready
    answers 503 within 2 s, 200 again within 10 s without restarting Triton, and the ensemble answers
    again; a stub dead at SIGTERM is healed (by the watch during the drain, or just before Triton
    stops), so the launcher still exits 0."""
    from tools.client import TritonDetectorClient

    process, ports = launcher(served_repo, tmp_path)
    server = [c.pid for c in psutil.Process(process.pid).children()]
    frame = val_images[0].read_bytes()
    for instance in ("preprocess_0_0", "detector_0_1", "postprocess_0_0"):
        kill_stub(process, instance)
        down = wait_for(lambda: readiness(ports[3], "/ready")[0] == 503, 2.0)
        assert down is not None, f"/ready still 200 two seconds after {instance} died"
        up = wait_for(lambda: readiness(ports[3], "/ready")[0] == 200, 10.0)
        assert up is not None, f"not ready again within 10 s of {instance} dying"
        with TritonDetectorClient(f"{LOOPBACK}:{ports[1]}", "grpc") as client:
            assert len(client.detect([frame])) == 1
    assert [c.pid for c in psutil.Process(process.pid).children()] == server  # healed in place
    log = (tmp_path / "launcher.log").read_text()
    assert log.count("heal: stub ") == 3 and "of detector died; reloaded detector" in log
    kill_stub(process, "postprocess_0_0")  # dead when the stop begins
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0, (tmp_path / "launcher.log").read_text()[-2000:]


def test_a_step_that_keeps_dying_leaves_the_replica_unready_and_not_live(served_repo, tmp_path):
    ports = [free_port() for _ in range(4)]
    command = [sys.executable, "-m", "tools.server", "local", "--repo", str(served_repo), "--http-port", str(ports[0]),
               "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]), "--ready-port", str(ports[3]),
               "--grace", "0", "--max-heals", "1", "--log", str(tmp_path / "server.log")]
    process = start(command, "Triton ready", tmp_path / "launcher.log")
    try:
        kill_stub(process, "preprocess_0_0")
        assert wait_for(lambda: readiness(ports[3], "/ready")[0] == 200 and "heal: stub" in
                        (tmp_path / "launcher.log").read_text(), 10.0) is not None
        kill_stub(process, "preprocess_0_0")  # a second death: more than --max-heals 1
        assert wait_for(lambda: readiness(ports[3], "/live")[0] == 503, 5.0) is not None
        assert readiness(ports[3], "/ready")[0] == 503
        assert "left unready, liveness failing" in (tmp_path / "launcher.log").read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
