"""HAProxy (the Debian package) in front of local Triton replicas: its config, and a running instance.

One frontend takes gRPC (HTTP/2 cleartext, as tritonclient speaks it), another plain HTTP; both
balance each request round-robin over the replicas. Each replica is health-checked on its
launcher's readiness endpoint (tools.drain: /ready turns 503 the moment a drain starts), so a
draining replica stops getting frames within one check window while it finishes its own. A
replica that refuses connections (killed) has its new requests redispatched to another one.

Every request is logged on stdout (when it ended, how long it took, which replica served it,
retries); `HAProxy.requests()` reads them back and `server_states()` reads the stats page.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from compress.errors import MissingDependencyError, ServerError, ToolkitError
from tools.process import ManagedProcess
from tools.server import LOOPBACK, free_port

INSTALL_HINT = "install the Debian package: apt-get install -y haproxy (`make test` does so through .ci/install-haproxy)"
GRPC_BACKEND, HTTP_BACKEND = "grpc_replicas", "http_replicas"
# one line per request: end time (s and µs), active time ms, backend, server, HTTP status,
# termination state, retries ("+n" when redispatched to another server)
LOG_FORMAT = "req %[date] %[date_us] %Ta %b %s %ST %ts %rc"


@dataclass(frozen=True)
class Backend:
    """One replica as the balancer sees it: its gRPC and HTTP ports and where it is health-checked."""

    name: str
    grpc_port: int
    http_port: int
    check_port: int
    host: str = LOOPBACK


@dataclass(frozen=True)
class HealthCheck:
    path: str = "/ready"
    inter_ms: int = 500
    fall: int = 2
    rise: int = 2
    timeout_ms: int = 400

    @property
    def down_within_s(self) -> float:
        """Worst case from a replica failing its check to the balancer marking it down: the next
        check comes within one interval, `fall` failed checks are needed, the last may time out."""
        return (self.inter_ms * self.fall + self.timeout_ms) / 1e3

    @property
    def up_within_s(self) -> float:
        return (self.inter_ms * self.rise + self.timeout_ms) / 1e3


def check_name(value: str) -> str:
    if not value or not all(c.isalnum() or c in "-_." for c in value):
        raise ToolkitError(f"replica name {value!r} is not usable in an HAProxy config",
                           hint="use letters, digits, '-', '_' or '.'")
    return value


def render_config(backends: list[Backend], grpc_port: int, http_port: int, stats_port: int,
                  check: HealthCheck = HealthCheck(), bind: str = LOOPBACK) -> str:
    """haproxy.cfg text for `backends` behind a gRPC (h2) and an HTTP frontend, with a stats page."""
    if not backends:
        raise ToolkitError("an HAProxy config needs at least one replica")
    names = [check_name(b.name) for b in backends]
    if len(set(names)) != len(names):
        raise ToolkitError(f"replica names must differ: {', '.join(names)}")
    ports = [grpc_port, http_port, stats_port]
    if len(set(ports)) != len(ports) or not all(0 < p < 65536 for p in ports):
        raise ToolkitError(f"frontend ports must be distinct and valid, not {ports}")
    timing = f"inter {check.inter_ms}ms fall {check.fall} rise {check.rise}"
    lines = [
        "# Rendered by tools/haproxy.py: Triton replicas behind one gRPC and one HTTP frontend.",
        "global",
        "    log stdout format raw local0 info",
        "    maxconn 4096",
        "",
        "defaults",
        "    mode http",
        "    log global",
        "    timeout connect 1s",
        "    timeout client 5m",  # a camera's connection idles between frames
        "    timeout server 60s",
        f"    timeout check {check.timeout_ms}ms",
        # A replica that refuses the connection (killed, not yet marked down): try another one.
        "    retries 2",
        "    option redispatch 1",
        "",
        "frontend grpc",
        f"    bind {bind}:{grpc_port} proto h2",  # h2c with prior knowledge, as gRPC clients connect
        f'    log-format "{LOG_FORMAT}"',
        f"    default_backend {GRPC_BACKEND}",
        "",
        "frontend http",
        f"    bind {bind}:{http_port}",
        f'    log-format "{LOG_FORMAT}"',
        f"    default_backend {HTTP_BACKEND}",
        "",
        f"backend {GRPC_BACKEND}",
        "    balance roundrobin",
        f"    option httpchk GET {check.path}",
        "    http-check expect status 200",
    ]
    # the readiness endpoint speaks HTTP/1.1 even where the traffic is h2: check-proto h1
    lines += [f"    server {b.name} {b.host}:{b.grpc_port} proto h2 check port {b.check_port} check-proto h1 {timing}"
              for b in backends]
    lines += ["", f"backend {HTTP_BACKEND}", "    balance roundrobin"]
    # one health state per replica: the HTTP side follows the gRPC side's checks
    lines += [f"    server {b.name} {b.host}:{b.http_port} track {GRPC_BACKEND}/{b.name}" for b in backends]
    lines += ["", "listen stats", f"    bind {bind}:{stats_port}", "    no log", "    stats enable",
              "    stats uri /stats", ""]
    return "\n".join(lines)


def haproxy_binary() -> str:
    """$HAPROXY if set (a build of your own), else haproxy on PATH or in /usr/sbin (not on a
    non-root user's PATH on Debian)."""
    chosen = os.environ.get("HAPROXY")
    if chosen:
        found = shutil.which(chosen)
        if not found:
            raise MissingDependencyError(f"HAPROXY={chosen} is not an executable", hint=INSTALL_HINT)
        return found
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
    if not found:
        raise MissingDependencyError("haproxy is not installed", hint=INSTALL_HINT)
    return found


def validate_config(path: Path) -> None:
    """`haproxy -c`: a config it would refuse becomes one readable error."""
    result = subprocess.run([haproxy_binary(), "-c", "-q", "-f", str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        detail = " | ".join(line.strip() for line in (result.stdout + result.stderr).splitlines() if line.strip())
        raise ToolkitError(f"haproxy refused {path}: {detail[-600:]}")


@dataclass
class RequestLog:
    """One request as HAProxy logged it."""

    started: float  # epoch seconds: end minus active time
    ended: float
    backend: str
    server: str  # "<NOSRV>" when no replica was available
    status: int
    termination: str  # "--" normal; e.g. "SH"/"SD" the server went away mid-request
    retries: int
    redispatched: bool


@dataclass
class HAProxy:
    """A running haproxy on loopback for `backends` (a context manager); `folder` keeps its config."""

    backends: list[Backend]
    folder: Path
    check: HealthCheck = field(default_factory=HealthCheck)
    grpc_port: int = 0
    http_port: int = 0
    stats_port: int = 0

    def __post_init__(self):
        self.grpc_port = self.grpc_port or free_port()
        self.http_port = self.http_port or free_port()
        self.stats_port = self.stats_port or free_port()
        self.config_path = Path(self.folder) / "haproxy.cfg"
        self.process: ManagedProcess | None = None
        self._output: ManagedProcess | None = None  # the last process started: its output outlives it

    @property
    def grpc_url(self) -> str:
        return f"{LOOPBACK}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{LOOPBACK}:{self.http_port}"

    @property
    def stats_url(self) -> str:
        return f"http://{LOOPBACK}:{self.stats_port}/stats;csv"

    def start(self, timeout_s: float = 10.0) -> "HAProxy":
        binary = haproxy_binary()
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(render_config(self.backends, self.grpc_port, self.http_port, self.stats_port,
                                                  self.check))
        validate_config(self.config_path)
        self.process = self._output = ManagedProcess("haproxy", [binary, "-f", str(self.config_path), "-db"],
                                                     capture=True, new_session=False).start()
        try:
            self.process.wait_until(self._answers, timeout_s, "answer on its stats port")
        except BaseException:
            self.stop()
            raise
        return self

    def _answers(self) -> bool:
        try:
            self.server_states()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout_s=10)
            self.process = None

    def __enter__(self) -> "HAProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def output(self) -> list[tuple[float, str]]:
        """Everything haproxy printed so far, with the time each line arrived (kept after it stopped)."""
        return self._output.output() if self._output else []

    def requests(self, since: float = 0.0) -> list[RequestLog]:
        """The requests logged so far that HAProxy received after `since` (epoch s), in the order they ended."""
        logged = []
        for received, line in self.output():
            if received < since:
                continue
            parts = line.split()
            if len(parts) != 9 or parts[0] != "req":
                continue
            _, seconds, micros, active_ms, backend, server, status, termination, retries = parts
            try:
                ended = int(seconds) + int(micros) / 1e6
                active = max(int(active_ms), 0) / 1e3
                if ended - active >= since:
                    logged.append(RequestLog(ended - active, ended, backend, server, int(status), termination,
                                             int(retries.lstrip("+")), retries.startswith("+")))
            except ValueError:
                continue
        return logged

    def server_states(self) -> dict[str, str]:
        """{replica: UP / DOWN / MAINT / ...} for the gRPC backend (the HTTP side tracks it), from the
        stats page; raises OSError if haproxy does not answer."""
        from tools.drain import LOOPBACK_OPENER

        with LOOPBACK_OPENER.open(self.stats_url, timeout=2) as response:
            text = response.read().decode()
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {row["svname"]: row["status"].split()[0] for row in rows
                if row["pxname"] == GRPC_BACKEND and row["svname"] not in ("FRONTEND", "BACKEND")}

    def wait_for_state(self, name: str, state: str, timeout_s: float, poll_s: float = 0.05) -> float:
        """Block until replica `name` is `state` (UP, DOWN) in the balancer; returns when (epoch s)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if self.server_states().get(name) == state:
                    return time.time()
            except OSError:
                pass
            time.sleep(poll_s)
        raise ServerError(f"haproxy did not see replica {name} {state} within {timeout_s:.0f} s",
                          hint=f"states now: {self.server_states()}")
