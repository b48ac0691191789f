"""Drain and reload without loss, against the real server under concurrent HTTP + gRPC load.

SIGTERM goes to the launcher (`python -m tools.server`, what `make serve` runs), which fronts
readiness and drains in stages (tools.drain):
- a backlog queued at the signal is answered, every request (the idle wait: Triton alone refuses
  the next ensemble step of a request it has queued, "Server is stopping");
- a client that keeps sending after the launcher turned not-ready, as a load balancer does
  until its health checks notice, is answered too (the grace), and a second signal does not
  cut the drain short;
- Triton reports ready throughout while the launcher's readiness already says 503.
Reloading the detector's config through the repository API mid-load fails zero requests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from google.protobuf import json_format

from tests.conftest import ROOT
from tools import triton_config as tc
from tools.client import TritonDetectorClient
from tools.drain import http_ok
from tools.server import LOOPBACK, TritonServer, free_port

pytestmark = pytest.mark.integration

EXIT_TIMEOUT_S = 10
BURST = 48  # requests queued at once: below the served repository's queue limit (64 per step)


class Launcher:
    """`python -m tools.server local` on free loopback ports, as a user starts it."""

    def __init__(self, repo, log_dir, *drain_args: str, exit_timeout_s: int = EXIT_TIMEOUT_S):
        self.http, self.grpc, self.metrics, self.ready = (free_port() for _ in range(4))
        self.output = log_dir / "launcher.out"
        command = [sys.executable, "-m", "tools.server", "local", "--repo", str(repo),
                   "--http-port", str(self.http), "--grpc-port", str(self.grpc), "--metrics-port", str(self.metrics),
                   "--ready-port", str(self.ready), "--log", str(log_dir / "server.log"),
                   "--exit-timeout", str(exit_timeout_s), *drain_args]
        with open(self.output, "wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                            env={**os.environ, "PYTHONPATH": str(ROOT)})
        deadline = time.monotonic() + 120
        while not http_ok(self.ready_url, 0.5):
            assert self.process.poll() is None, self.output.read_text()
            assert time.monotonic() < deadline, "the launcher was not ready within 120 s"
            time.sleep(0.1)

    @property
    def ready_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ready}/ready"

    def url(self, protocol: str) -> str:
        return f"{LOOPBACK}:{self.http if protocol == 'http' else self.grpc}"

    def triton_ready(self) -> bool:
        return http_ok(f"http://{LOOPBACK}:{self.http}/v2/health/ready")

    def wait(self) -> int:
        return self.process.wait(timeout=60)

    def stages(self) -> list[str]:
        """The launcher's drain stages in the order it printed them (progress lines left out)."""
        words = [line.split()[1] for line in self.output.read_text().splitlines() if line.startswith("drain: ")]
        return [word for word in words if word != "waiting"]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def send_until(url, protocol, payload, stop: threading.Event, records: list, lock, interval_s: float = 0.0):
    """Send frames (back to back, or one per `interval_s`) until `stop`; record (sent, finished, error, protocol)."""
    with TritonDetectorClient(url, protocol, timeout_s=30) as client:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                client.detect([payload])
                error = None
            except Exception as exc:  # recorded, not raised: the assertions read every outcome
                error = exc
            with lock:
                records.append((sent, time.monotonic(), error, protocol))
            if interval_s:
                stop.wait(max(0.0, sent + interval_s - time.monotonic()))


def failures(records, signalled: float, sent_before: float = float("inf")) -> list[str]:
    """The failed requests among those sent before `sent_before`, timed from the signal."""
    return [f"{r[3]} request sent at {r[0] - signalled:+.2f} s from the signal failed: {r[2]}"
            for r in records if r[0] < sent_before and r[2]]


def send_burst(url: str, payload: bytes, count: int) -> tuple[list, threading.Event]:
    """`count` gRPC requests sent at once, asynchronously, so that they queue in the server. Returns
    the outcomes ((error or None, time it came back) each) and an event set when all are in."""
    import tritonclient.grpc as grpcclient

    from tools.client import OUTPUT_NAMES, encoded_batch

    client = grpcclient.InferenceServerClient(url)
    outcomes, done, lock = [], threading.Event(), threading.Lock()

    def finished(result, error):  # tritonclient passes both by keyword
        with lock:
            outcomes.append((error, time.monotonic()))
            if len(outcomes) == count:
                client.close()
                done.set()

    image = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
    image.set_data_from_numpy(encoded_batch([payload]))
    outputs = [grpcclient.InferRequestedOutput(name) for name in OUTPUT_NAMES]
    for _ in range(count):
        client.async_infer("yolo", [image], finished, outputs=outputs, client_timeout=60)
    return outcomes, done


def test_sigterm_answers_the_backlog_queued_at_the_signal(served_repo, tmp_path, val_images):
    """No grace (nothing else routes here): a backlog queued at the signal is answered, every request.
    Triton's own stop refuses the next ensemble step of a queued request ("Server is stopping"), so
    the launcher waits until Triton is idle before it stops it."""
    launcher = Launcher(served_repo, tmp_path, "--grace", "0", "--drain-quiet", "0.3", exit_timeout_s=5)
    stop, lock, records = threading.Event(), threading.Lock(), []
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            streams = [pool.submit(send_until, launcher.url(protocol), protocol, val_images[0].read_bytes(), stop,
                                   records, lock) for protocol in ("grpc", "http") * 2]
            time.sleep(2.0)
            outcomes, all_in = send_burst(launcher.url("grpc"), val_images[1].read_bytes(), BURST)
            signalled = time.monotonic()
            launcher.process.send_signal(signal.SIGTERM)
            stop.set()  # nothing new is sent; the burst and the streams' last requests are queued or in flight
            for stream in streams:
                stream.result(timeout=60)
        assert all_in.wait(timeout=120), f"only {len(outcomes)} of {BURST} burst requests came back"
        code = launcher.wait()
    finally:
        launcher.close()
    before = [r for r in records if r[0] < signalled]
    assert len(before) >= 16, "too little load before the signal to mean anything"
    assert not failures(records, signalled, signalled), failures(records, signalled, signalled)[:3]
    failed = [str(error) for error, _ in outcomes if error is not None]
    assert not failed, f"{len(failed)} of {BURST} queued requests failed: {failed[:3]}"
    assert code == 0, launcher.output.read_text()
    output = launcher.output.read_text()
    assert launcher.stages() == ["not", "idle", "stopping"], output
    # the premise: part of the backlog was still in the server when the signal came
    assert any(finished > signalled for _, finished in outcomes), "the backlog was answered before the signal"


def test_sigterm_keeps_serving_while_balancers_notice(served_repo, tmp_path, val_images):
    """A client that, like a balancer between health checks, sends for LB_LAG_S after it first
    saw /ready answer 503, and sparsely enough that Triton looks idle between its frames: every
    frame it sends is answered, because the launcher's grace outlasts the lag."""
    lb_lag_s, interval_s = 1.6, 0.8
    launcher = Launcher(served_repo, tmp_path, "--grace", "2.5", "--drain-quiet", "0.3")
    stop, lock, records = threading.Event(), threading.Lock(), []
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            client = pool.submit(send_until, launcher.url("grpc"), "grpc", val_images[0].read_bytes(), stop, records,
                                 lock, interval_s)
            time.sleep(2.0)
            signalled = time.monotonic()
            launcher.process.send_signal(signal.SIGTERM)
            while http_ok(launcher.ready_url, 0.5):
                time.sleep(0.05)
            not_ready_at = time.monotonic()
            triton_ready_meanwhile = launcher.triton_ready()
            launcher.process.send_signal(signal.SIGINT)  # impatience: must not cut the drain short
            time.sleep(max(0.0, not_ready_at + lb_lag_s - time.monotonic()))
            stop.set()
            client.result(timeout=60)
        code = launcher.wait()
    finally:
        launcher.close()
    assert not_ready_at - signalled < 1.0, "readiness did not turn 503 promptly"
    assert triton_ready_meanwhile, "Triton stopped being ready before the drain let it"
    after_signal = [r for r in records if r[0] >= signalled]
    assert len(after_signal) >= 2, "the client sent too little after the signal to test the grace"
    assert not failures(records, signalled), failures(records, signalled)[:3]  # before and after it
    assert code == 0, launcher.output.read_text()
    assert launcher.stages() == ["not", "grace", "idle", "stopping"], launcher.output.read_text()
    assert "1 more signal(s) ignored" in launcher.output.read_text()


def run_streams(server, payload, seconds_before, action):
    """Four streams (2 HTTP, 2 gRPC); after `seconds_before`, `action(stop)` runs, then the streams stop."""
    stop, lock, records = threading.Event(), threading.Lock(), []
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(send_until, server.http_url if protocol == "http" else server.grpc_url, protocol,
                               payload, stop, records, lock) for protocol in ("http", "grpc", "http", "grpc")]
        time.sleep(seconds_before)
        marker = time.monotonic()
        result = action(stop)
        time.sleep(1.0)
        stop.set()
        for future in futures:
            future.result(timeout=60)  # a stream that hangs fails the test here
    return records, marker, result


def live_detector_config(server) -> dict:
    """The detector's config as the running server holds it (not as the repository's file says)."""
    import tritonclient.http as httpclient

    with httpclient.InferenceServerClient(server.http_url) as client:
        return client.get_model_config(tc.DETECTOR)


def test_reloading_the_detector_config_during_load_fails_nothing(served_repo, tmp_path, val_images):
    from tools.repository import RepositoryRecord

    settings = RepositoryRecord.load(served_repo).settings
    changed = tc.detector_config(settings)
    changed.dynamic_batching.max_queue_delay_microseconds = 500
    changed.instance_group[0].count = 1 if settings.detector_instances != 1 else 2  # a real change either way
    applied = {}
    with TritonServer(served_repo, log_path=tmp_path / "server.log") as server:
        def reload(_stop):
            server.load(tc.DETECTOR, json_format.MessageToJson(changed))
            applied["changed"] = live_detector_config(server)
            time.sleep(1.0)
            server.load(tc.DETECTOR, json_format.MessageToJson(tc.detector_config(settings)))
            applied["restored"] = live_detector_config(server)
            return time.monotonic()

        records, started, reloaded = run_streams(server, val_images[0].read_bytes(), 2.0, reload)
        assert server.is_ready()
    # the server really ran the new config, then the old one again
    assert applied["changed"]["dynamic_batching"]["max_queue_delay_microseconds"] == 500
    assert applied["changed"]["instance_group"][0]["count"] == changed.instance_group[0].count
    assert applied["restored"]["dynamic_batching"]["max_queue_delay_microseconds"] == settings.queue_delay_us
    assert applied["restored"]["instance_group"][0]["count"] == settings.detector_instances
    errors = [str(r[2]) for r in records if r[2] is not None]
    assert not errors, f"{len(errors)} of {len(records)} requests failed during the reload: {errors[:3]}"
    # the premise: requests were in flight while the detector was being replaced, on both protocols
    during = [r for r in records if r[0] < reloaded and r[1] > started]
    assert {r[3] for r in during} == {"http", "grpc"} and len(during) >= 8, f"{len(during)} requests overlapped the reload"
    assert len(records) >= 20
