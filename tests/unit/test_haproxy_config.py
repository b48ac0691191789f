"""The HAProxy config for replicas behind one gRPC and one HTTP frontend: accepted by haproxy itself,
with the settings a drain relies on; bad input and a missing haproxy are one readable error."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from compress.errors import MissingDependencyError, ToolkitError
from tests.conftest import ROOT
from tools import haproxy
from tools.haproxy import Backend, HealthCheck, render_config

BACKENDS = [Backend("r1", 9101, 9100, 9103), Backend("r2", 9111, 9110, 9113)]
CHECK = HealthCheck(inter_ms=500, fall=2, rise=2, timeout_ms=400)


def config_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()]


def test_config_routes_grpc_over_h2_and_checks_the_drain_endpoint():
    lines = config_lines(render_config(BACKENDS, 18101, 18100, 18102, CHECK))
    assert "bind 127.0.0.1:18101 proto h2" in lines  # gRPC clients speak h2c with prior knowledge
    assert "option httpchk GET /ready" in lines and "http-check expect status 200" in lines
    grpc = [line for line in lines if line.startswith("server ") and " proto h2 " in line]
    assert len(grpc) == 2
    for line, backend in zip(grpc, BACKENDS):
        # checks go to the launcher's readiness port over HTTP/1.1, with the short timings
        assert f"{backend.host}:{backend.grpc_port} proto h2 check port {backend.check_port} check-proto h1" in line
        assert line.endswith("inter 500ms fall 2 rise 2")
    http = [line for line in lines if line.startswith("server ") and " track " in line]
    assert http == [f"server {b.name} 127.0.0.1:{b.http_port} track grpc_replicas/{b.name}" for b in BACKENDS]
    assert "option redispatch 1" in lines and "timeout check 400ms" in lines


def test_check_window_is_interval_times_fall_plus_timeout():
    assert CHECK.down_within_s == pytest.approx(1.4)
    assert HealthCheck(inter_ms=200, fall=3, rise=1, timeout_ms=100).down_within_s == pytest.approx(0.7)


@pytest.mark.skipif(not (shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")),
                    reason="haproxy is not installed (.ci/run installs it)")
def test_haproxy_accepts_the_rendered_config(tmp_path):
    path = tmp_path / "haproxy.cfg"
    path.write_text(render_config(BACKENDS, 18101, 18100, 18102, CHECK))
    haproxy.validate_config(path)
    path.write_text(path.read_text().replace("balance roundrobin", "balance no-such-algorithm", 1))
    with pytest.raises(ToolkitError, match="haproxy refused"):
        haproxy.validate_config(path)


@pytest.mark.parametrize("backends, ports, message", [
    ([], (1, 2, 3), "at least one replica"),
    ([Backend("r1", 1, 2, 3), Backend("r1", 4, 5, 6)], (7, 8, 9), "must differ"),
    ([Backend("r 1", 1, 2, 3)], (7, 8, 9), "not usable"),
    (BACKENDS, (18100, 18100, 18102), "distinct"),
])
def test_bad_settings_are_refused_before_haproxy_sees_them(backends, ports, message):
    with pytest.raises(ToolkitError, match=message):
        render_config(backends, *ports)


def test_missing_haproxy_is_one_readable_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HAPROXY", str(tmp_path / "no-haproxy"))
    with pytest.raises(MissingDependencyError, match="apt-get install -y haproxy"):
        haproxy.haproxy_binary()
    # and at the CLI edge: one line, exit 2, before any replica starts
    done = subprocess.run([sys.executable, "-m", "loadtest.rollout", "--repo", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "HAPROXY": str(tmp_path / "no-haproxy")})
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: HAPROXY=") and "Traceback" not in done.stderr
