"""Start the real Triton server: the local `tritonserver` from the nvidia-pytriton wheel.

    python -m tools.server local --repo model_repository     # foreground, Ctrl-C stops (`make serve`)

The NGC container is started by `tools.container` (`make serve-docker`).

The launcher fronts readiness (`--ready-port`, default 8003: GET /ready, GET /live; see
tools.drain): point load balancers' health checks there. /ready also needs every step's Python
stub alive (tools.health): a stub that dies turns it 503 within a quarter second, the step is
reloaded and it turns 200 again; a step that keeps dying leaves /ready and /live at 503. Ctrl-C or SIGTERM drains in stages
(not ready, grace, wait until Triton is idle, stop) and a second signal does not cut it short.
The grace is skipped when nothing ever checked /ready (no balancer routes by it), `--grace 0`
always skips it, `--no-drain` stops Triton at once.

The local binary carries only the Python backend, so it runs with explicit model control and
loads the ensemble (which loads its steps) through the repository API: one model that fails
to load then gives a readable error instead of a server that never starts.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

from compress.errors import MissingDependencyError, ServerError, ToolkitError, cli_entry, require_file
from tools.health import HealSettings, StubWatch
from tools.process import ManagedProcess

LOOPBACK = "127.0.0.1"
ADMIN_HEADER = "admin-key"
# Operator APIs behind the admin key when restricted; health, metadata and inference stay open.
RESTRICTED_APIS = ("model-repository", "model-config", "shared-memory", "statistics", "trace", "logging")


def restricted_api_args(key: str) -> list[str]:
    """Triton flags that make the operator APIs require the header `admin-key: <key>` (HTTP and gRPC)."""
    apis = ",".join(RESTRICTED_APIS)
    return [f"--http-restricted-api={apis}:{ADMIN_HEADER}={key}", f"--grpc-restricted-protocol={apis}:{ADMIN_HEADER}={key}"]


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free loopback port, never one this process was given before: the kernel may hand the same
    free port to two calls in a row, and a server given it twice for HTTP and metrics exits."""
    for _ in range(1000):
        with socket.socket() as sock:
            sock.bind((LOOPBACK, 0))
            port = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            break
    _HANDED_OUT.add(port)
    return port


def pytriton_paths() -> dict[str, Path]:
    """Binary, backends and libraries of the tritonserver inside the nvidia-pytriton wheel."""
    try:
        import pytriton
    except ImportError:
        raise MissingDependencyError("nvidia-pytriton is not installed", hint="run `make venv`") from None
    root = Path(pytriton.__file__).parent
    paths = {
        "binary": root / "tritonserver" / "bin" / "tritonserver",
        "backends": root / "tritonserver" / "backends",
        "stubs": root / "tritonserver" / "python_backend_stubs",
        "libs": root.parent / "nvidia_pytriton.libs",
    }
    require_file(paths["binary"], "tritonserver binary")
    return paths


def ensure_python_stub(paths: dict[str, Path]) -> None:
    """The Python backend looks for its stub beside libtriton_python.so; the wheel keeps it apart."""
    target = paths["backends"] / "python" / "triton_python_backend_stub"
    if target.exists():
        return
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    source = require_file(paths["stubs"] / version / "triton_python_backend_stub", f"python {version} backend stub")
    shutil.copy2(source, target)


class TritonServer:
    """A local tritonserver process on free loopback ports; a context manager.

    `models` are loaded after start-up (explicit model control); the ensemble loads its steps.
    The server is a tools.process.ManagedProcess: it dies with the thread that started it, so
    start it from a thread that lives as long as the server should.
    """

    def __init__(self, repository: Path, models: tuple[str, ...] = ("yolo",), http_port: int | None = None,
                 grpc_port: int | None = None, metrics_port: int | None = None, log_path: Path | None = None,
                 exit_timeout_s: int = 10, admin_key: str | None = None, cpus: tuple[int, ...] | None = None):
        self.repository = require_file(repository, "model repository").resolve()
        self.models = models
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.log_path = Path(log_path) if log_path else None
        self.exit_timeout_s = exit_timeout_s
        self.admin_key = admin_key  # set: operator APIs need it (restricted), and `load` sends it
        self.cpus = cpus  # the cores the server (and its stubs) run on; None: this process's (tools.placement)
        self._process: ManagedProcess | None = None

    @property
    def http_url(self) -> str:
        return f"{LOOPBACK}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{LOOPBACK}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{LOOPBACK}:{self.metrics_port}/metrics"

    def command(self, binary: Path, backends: Path) -> list[str]:
        return [
            str(binary), f"--model-repository={self.repository}", f"--backend-directory={backends}",
            "--model-control-mode=explicit", "--strict-readiness=true",
            f"--http-address={LOOPBACK}", f"--http-port={self.http_port}",
            f"--grpc-address={LOOPBACK}", f"--grpc-port={self.grpc_port}",
            f"--metrics-address={LOOPBACK}", f"--metrics-port={self.metrics_port}",
            "--allow-metrics=true", "--metrics-interval-ms=500",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            *(restricted_api_args(self.admin_key) if self.admin_key else []),
        ]

    @property
    def process(self):
        """The running tritonserver's Popen (None before start and after stop)."""
        return self._process.process if self._process else None

    def start(self, timeout_s: float = 60.0) -> "TritonServer":
        paths = pytriton_paths()
        ensure_python_stub(paths)
        env = dict(os.environ)
        # The Python backend stub runs the first python3 on PATH: make it this interpreter's.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(paths["libs"]), env.get("LD_LIBRARY_PATH")) if p)
        env.setdefault("OMP_NUM_THREADS", "1")
        self._process = ManagedProcess("tritonserver", self.command(paths["binary"], paths["backends"]), env=env,
                                       log_path=self.log_path, cpus=self.cpus).start()
        try:
            self._process.wait_until(lambda: self._ask("is_server_live"), timeout_s, "start", poll_s=0.2)
            for model in self.models:
                self.load(model)
            self._process.wait_until(lambda: self._ask("is_server_ready"), timeout_s, "become ready", poll_s=0.2)
        except BaseException:  # a failed load, Ctrl-C or SIGTERM while starting: leave nothing running
            self.stop()
            raise
        return self

    def load(self, model: str, config_json: str | None = None) -> None:
        """Load (or reload, with an optional config override) a model through the repository API."""
        from tritonclient.utils import InferenceServerException

        try:
            with self._client(timeout_s=120) as client:
                client.load_model(model, config=config_json,
                                  headers={ADMIN_HEADER: self.admin_key} if self.admin_key else None)
        except InferenceServerException as error:
            raise ServerError(f"loading model {model!r} failed: {(error.message() or str(error)).strip()}",
                              hint=self._process.log_hint() if self._process else "see the server log") from None

    def unload(self, model: str) -> None:
        """Unload a model through the repository API (its stubs stop)."""
        from tritonclient.utils import InferenceServerException

        try:
            with self._client(timeout_s=120) as client:
                client.unload_model(model, headers={ADMIN_HEADER: self.admin_key} if self.admin_key else None)
        except InferenceServerException as error:
            raise ServerError(f"unloading model {model!r} failed: {(error.message() or str(error)).strip()}",
                              hint=self._process.log_hint() if self._process else "see the server log") from None

    def reload(self, model: str) -> None:
        """Unload and load `model` again: new stub processes. A plain load of a model whose stub
        died is a no-op until Triton has noticed the death (a request must fail first)."""
        self.unload(model)
        self.load(model)

    def is_ready(self) -> bool:
        return self._process is not None and self._process.running() and self._ask("is_server_ready")

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGTERM (Triton drains in-flight requests for up to its exit timeout), then SIGKILL for
        the whole process group if it hangs; returns the server's exit code.

        Stub processes left in the server's process group (the server runs in its own session)
        are killed too, so nothing of this server outlives the call.
        """
        if self._process is None:
            return None
        code = self._process.stop(self.exit_timeout_s + 15 if timeout_s is None else timeout_s)
        self._kill_orphaned_stubs()
        self._process = None
        return code

    def _kill_orphaned_stubs(self) -> None:
        """Python stubs of this repository whose server is gone (seen after a server crash: a stub
        forked while the server was dying kept running, adopted by init)."""
        import psutil

        marker = f"{self.repository}{os.sep}"
        for process in psutil.process_iter(["pid", "ppid", "cmdline"]):
            cmdline = process.info["cmdline"] or []
            if (process.info["ppid"] == 1 and cmdline and cmdline[0].endswith("triton_python_backend_stub")
                    and any(arg.startswith(marker) for arg in cmdline[1:2])):
                try:
                    process.kill()
                except psutil.Error:
                    pass

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _client(self, timeout_s: float = 2.0):
        """A short-lived HTTP client: tritonclient's is bound to the thread that made it."""
        import tritonclient.http as httpclient

        return httpclient.InferenceServerClient(self.http_url, connection_timeout=timeout_s, network_timeout=timeout_s)

    def _ask(self, question: str) -> bool:
        """`is_server_live` / `is_server_ready`; an unreachable or failing server answers False."""
        try:
            with self._client() as client:
                return bool(getattr(client, question)())
        except Exception:  # connection refused, reset or timed out while starting or draining
            return False


class StopRequests:
    """The first SIGINT/SIGTERM/SIGHUP asks for a stop; later ones are counted, never obeyed, so a
    second Ctrl-C or a supervisor repeating SIGTERM cannot cut a drain short and orphan frames."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self):
        self.first: str | None = None
        self.ignored = 0

    def install(self) -> "StopRequests":
        for signum in self.SIGNALS:
            signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        if self.first is None:
            self.first = signal.Signals(signum).name
        else:
            self.ignored += 1


@cli_entry
def main(argv: list[str] | None = None) -> None:
    from tools import drain

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", choices=["local"], default="local",
                        help="local (the only mode here; the container: `python -m tools.container serve`)")
    parser.add_argument("--repo", type=Path, default=Path("model_repository"))
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--ready-port", type=int, default=8003,
                        help="the launcher's readiness endpoint (GET /ready, /live): health-check this one")
    parser.add_argument("--log", type=Path, default=Path("artifacts/server.log"))
    parser.add_argument("--exit-timeout", type=int, default=5, help="seconds Triton drains in-flight requests on stop")
    parser.add_argument("--grace", type=float, default=drain.DEFAULT_GRACE_S,
                        help="seconds between answering not-ready and waiting for idle, for balancers to stop "
                             "routing here (default: probe period x failure threshold + propagation; 0 skips; "
                             "skipped anyway if nothing ever checked /ready)")
    parser.add_argument("--drain-max-wait", type=float, default=drain.DEFAULT_MAX_WAIT_S,
                        help="at most this long waiting for Triton to become idle after the grace")
    parser.add_argument("--drain-quiet", type=float, default=drain.DEFAULT_QUIET_S,
                        help="idle means nothing pending and no request finished for this long")
    parser.add_argument("--max-heals", type=int, default=HealSettings.max_heals,
                        help="reloads of a step whose stub died, within %g s, before the replica gives up: "
                             "not ready and not live, for its supervisor to restart it" % HealSettings.window_s)
    parser.add_argument("--no-drain", action="store_true",
                        help="on a signal, SIGTERM Triton at once (frames in flight between steps may be refused)")
    args = parser.parse_args(argv)
    for name in ("grace", "drain_max_wait", "drain_quiet"):
        if getattr(args, name) < 0:
            raise ToolkitError(f"--{name.replace('_', '-')} must be 0 or more, not {getattr(args, name)}")
    settings = drain.DrainSettings(args.grace, args.drain_max_wait, args.drain_quiet)
    server = TritonServer(args.repo, http_port=args.http_port, grpc_port=args.grpc_port,
                          metrics_port=args.metrics_port, log_path=args.log, exit_timeout_s=args.exit_timeout)
    try:  # bound before the (possibly long) model load: a taken port fails at once; 503 until ready
        front = drain.ReadinessFront(server.http_url, LOOPBACK, args.ready_port)
    except OSError as error:
        raise ServerError(f"cannot serve readiness on {LOOPBACK}:{args.ready_port}: {error.strerror}",
                          hint="pick a free port with --ready-port") from None
    say = functools.partial(print, flush=True)
    with front:
        server.start()
        watch = None
        try:
            # readiness also needs every step's stub alive; a dead one is reloaded (tools.health)
            watch = StubWatch(server, settings=HealSettings(max_heals=args.max_heals), say=say).start()
            front.healthy, front.alive = watch.healthy, watch.alive
            stops = StopRequests().install()  # before announcing ready: every stop from then on drains
            front.start_being_ready()
            say(f"Triton ready: HTTP {server.http_url}  gRPC {server.grpc_url}  metrics {server.metrics_url}  "
                f"readiness {front.url}/ready  (log {args.log}); Ctrl-C or SIGTERM drains and stops")
            while server.process.poll() is None and stops.first is None:
                time.sleep(0.2)
            reason = stops.first or "server exited"
            if stops.first is None or args.no_drain:
                code = server.stop()
            else:
                code = drain.drain_and_stop(server, front, settings, say, before_stop=watch.stop_healed)
            if stops.ignored:
                say(f"({stops.ignored} more signal(s) ignored while draining)")
        finally:
            if watch:
                watch.stop()
            server.stop()  # a no-op once stopped; after a failure above, nothing is left running
    print(f"tritonserver stopped ({reason}, exit {code})", flush=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
