"""Local replicas of a model repository, each behind the drain launcher, and HAProxy in front.

A `Replica` is one `python -m tools.server` process (the launcher that fronts readiness and
drains on SIGTERM) on fixed loopback ports, so a restarted replica comes back where the balancer
expects it. A `Cluster` starts the replicas and HAProxy and performs a rollout's moves:
drain (SIGTERM), start, and kill (SIGKILL of Triton and its launcher: no drain possible).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from compress.env import PROJECT_ROOT
from compress.errors import ServerError
from tools.drain import DrainSettings, http_ok
from tools.haproxy import Backend, HAProxy, HealthCheck, haproxy_binary
from tools.process import ManagedProcess
from tools.repository import RepositoryRecord
from tools.server import LOOPBACK, free_port
from tools.stub_health import stubs


def drain_settings_for(check: HealthCheck, quiet_s: float = 0.5, max_wait_s: float = 15.0) -> DrainSettings:
    """A replica behind this balancer needs a grace as long as the balancer takes to mark it down
    (plus half a second for the last request it routed there to arrive)."""
    return DrainSettings(grace_s=check.down_within_s + 0.5, max_wait_s=max_wait_s, quiet_s=quiet_s)


@dataclass
class Replica:
    name: str
    repo: Path
    logs: Path
    settings: DrainSettings
    exit_timeout_s: int = 5

    def __post_init__(self):
        self.http_port, self.grpc_port, self.metrics_port, self.ready_port = (free_port() for _ in range(4))
        self.launcher: ManagedProcess | None = None
        self.starts: list[float] = []  # seconds each start took to become ready

    @property
    def process(self):
        """The launcher's Popen (None before the first start)."""
        return self.launcher.process if self.launcher else None

    @property
    def backend(self) -> Backend:
        return Backend(self.name, self.grpc_port, self.http_port, self.ready_port)

    @property
    def grpc_url(self) -> str:
        return f"{LOOPBACK}:{self.grpc_port}"

    @property
    def ready_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ready_port}/ready"

    @property
    def metrics_url(self) -> str:
        return f"http://{LOOPBACK}:{self.metrics_port}/metrics"

    @property
    def launcher_log(self) -> Path:
        return self.logs / f"{self.name}.launcher.log"

    def is_running(self) -> bool:
        return self.launcher is not None and self.launcher.running()

    def launch(self) -> None:
        """Start the launcher; `wait_ready` blocks until it answers ready."""
        command = [sys.executable, "-m", "tools.server", "local", "--repo", str(self.repo),
                   "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
                   "--metrics-port", str(self.metrics_port), "--ready-port", str(self.ready_port),
                   "--log", str(self.logs / f"{self.name}.triton.log"), "--exit-timeout", str(self.exit_timeout_s),
                   "--grace", str(self.settings.grace_s), "--drain-max-wait", str(self.settings.max_wait_s),
                   "--drain-quiet", str(self.settings.quiet_s)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH"))
                                                           if p)}
        # its own session: a Ctrl-C meant for the rollout must not start every drain at once
        self.launcher = ManagedProcess(f"replica {self.name}", command, env=env, cwd=PROJECT_ROOT,
                                       log_path=self.launcher_log).start()

    def wait_ready(self, timeout_s: float = 180.0) -> float:
        took = self.launcher.wait_until(lambda: http_ok(self.ready_url, timeout_s=0.5), timeout_s, "become ready")
        self.starts.append(took)
        return took

    def start(self, timeout_s: float = 180.0) -> float:
        self.launch()
        return self.wait_ready(timeout_s)

    def drain(self) -> int | None:
        """SIGTERM the launcher: it turns not-ready, waits its grace and for Triton to be idle, stops
        it; returns the launcher's exit code (Triton's)."""
        if not self.is_running():
            return None
        self.launcher.send(signal.SIGTERM)
        return self.wait_stopped()

    def wait_stopped(self) -> int | None:
        s = self.settings
        timeout_s = s.grace_s + s.max_wait_s + self.exit_timeout_s + 30
        code = self.launcher.wait(timeout_s)
        if code is None:
            self.kill()
            raise ServerError(f"replica {self.name} did not finish its drain within {timeout_s:.0f} s",
                              hint=f"see {self.launcher_log}")
        self.launcher.stop()  # reaps it and closes its log
        return code

    def kill_stub(self, instance: str) -> float:
        """SIGKILL one Python-backend stub of this replica's Triton (`preprocess_0_0`, ...), as the
        kernel's OOM killer would; returns when (epoch s). Triton and the launcher live on."""
        import psutil

        for triton in psutil.Process(self.launcher.pid).children():
            pid = stubs(server_pid=triton.pid).get(instance)
            if pid:
                os.kill(pid, signal.SIGKILL)
                return time.time()
        raise ServerError(f"replica {self.name} has no live stub {instance}")

    def kill(self) -> float | None:
        """SIGKILL Triton's process group (server and Python stubs) and the launcher, Triton first:
        a launcher killed first would have its server sent SIGTERM, a clean drain. Returns when
        Triton was gone (epoch s): until then it still held its connections and took requests."""
        import psutil

        if self.launcher is None or self.launcher.process is None:
            return None
        try:
            children = psutil.Process(self.launcher.pid).children()
        except psutil.Error:
            children = []
        for child in children:
            try:
                os.killpg(child.pid, signal.SIGKILL)  # Triton runs in its own session: group id = pid
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + 10
        while any(_alive(child) for child in children) and time.monotonic() < deadline:
            time.sleep(0.002)
        gone = time.time()
        self.launcher.stop(timeout_s=0, signum=signal.SIGKILL)
        return gone


def _alive(process) -> bool:
    """Not yet dead: a killed child stays a zombie until its parent reaps it, but serves nothing."""
    import psutil

    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class Cluster:
    """`count` replicas of `repo` behind HAProxy (a context manager); every replica drains on exit."""

    def __init__(self, repo: Path, folder: Path, count: int = 2, check: HealthCheck = HealthCheck(),
                 settings: DrainSettings | None = None):
        haproxy_binary()  # before anything starts: a missing balancer is one readable error
        RepositoryRecord.load(repo)  # built, or one error saying how
        self.folder = Path(folder)
        self.check = check
        self.settings = settings or drain_settings_for(check)
        self.replicas = [Replica(f"r{i + 1}", Path(repo).resolve(), self.folder / "logs", self.settings)
                         for i in range(count)]
        self.haproxy = HAProxy([r.backend for r in self.replicas], self.folder, check)
        self._stack = ExitStack()

    def replica(self, name: str) -> Replica:
        return next(r for r in self.replicas if r.name == name)

    def start(self) -> "Cluster":
        try:
            self._stack.callback(self._stop_replicas)
            for replica in self.replicas:  # in parallel: each start is mostly waiting on model loads
                replica.launch()
            for replica in self.replicas:
                replica.wait_ready()
            self._stack.enter_context(self.haproxy)
            self.wait_in_rotation()
        except BaseException:
            self._stack.close()
            raise
        return self

    def wait_in_rotation(self, timeout_s: float = 30.0) -> None:
        """Every running replica UP in the balancer."""
        for replica in self.replicas:
            if replica.is_running():
                self.haproxy.wait_for_state(replica.name, "UP", timeout_s)

    def restart(self, name: str) -> float:
        """Start a stopped replica and wait until the balancer routes to it again; returns when (epoch s)."""
        replica = self.replica(name)
        replica.start()
        return self.haproxy.wait_for_state(name, "UP", self.check.up_within_s + 30)

    def ensure_all_running(self) -> None:
        for replica in self.replicas:
            if not replica.is_running():
                replica.kill()  # whatever a killed replica left behind
                self.restart(replica.name)

    def _stop_replicas(self) -> None:
        running = [r for r in self.replicas if r.is_running()]
        for replica in running:
            replica.launcher.send(signal.SIGTERM)  # all drains at once
        for replica in running:
            try:
                replica.wait_stopped()
            except ServerError:
                pass  # killed by drain(): nothing left running

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> "Cluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
