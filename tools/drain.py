"""Stop a Triton server without losing a frame it accepted: readiness first, then drain, then stop.

Triton has no "stop being ready" call, and on SIGTERM it refuses new requests at once, including
the next ensemble step of a request already half done. So the launcher (`python -m tools.server`)
fronts readiness with a small HTTP endpoint of its own and stops in four stages:

1. not ready: GET /ready answers 503 while Triton keeps serving everything it is sent;
2. grace: load balancers see the failing check and stop routing here (skipped when nothing
   ever checked /ready: then no balancer routes by it);
3. idle: wait until Triton has nothing pending and no request counter moved for a quiet window
   (its Prometheus metrics), at most `max_wait_s`;
4. stop: SIGTERM to Triton, whose own exit timeout then covers only what is left.

GET /live mirrors Triton's liveness throughout, so a draining server is never restarted as dead.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

# The grace matches deploy/k8s/base/deployment.yaml's readiness probe: a checker polling every
# PROBE_PERIOD_S needs PROBE_FAILURE_THRESHOLD failed checks to mark the server down, and the
# change then takes a while to reach every router (endpoint slices, kube-proxy, ingress or LB
# reloads). A shorter grace lets frames arrive after Triton stopped; a longer one only delays.
PROBE_PERIOD_S = 2.0
PROBE_FAILURE_THRESHOLD = 2
PROPAGATION_S = 3.0
DEFAULT_GRACE_S = PROBE_PERIOD_S * PROBE_FAILURE_THRESHOLD + PROPAGATION_S
# Bounds the idle wait when clients keep sending past the grace (a misconfigured balancer).
DEFAULT_MAX_WAIT_S = 20.0
# "Pending" counts requests queued at a step; one that a step is executing, or one between two
# steps, is not counted (and the ensemble itself never is): the quiet window must outlast one
# batch of the slowest step, or the server would look idle mid-batch.
DEFAULT_QUIET_S = 1.0

PENDING_GAUGE = "nv_inference_pending_request_count"
ACTIVITY_COUNTERS = ("nv_inference_request_success", "nv_inference_request_failure", "nv_inference_exec_count")


@dataclass(frozen=True)
class DrainSettings:
    grace_s: float = DEFAULT_GRACE_S
    max_wait_s: float = DEFAULT_MAX_WAIT_S
    quiet_s: float = DEFAULT_QUIET_S
    poll_s: float = 0.1


# Loopback calls only: a proxy from the environment (http_proxy) must not be consulted.
LOOPBACK_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_ok(url: str, timeout_s: float = 1.0) -> bool:
    """True if GET `url` answers 200; anything else (refused, 503, timeout) is False."""
    try:
        with LOOPBACK_OPENER.open(url, timeout=timeout_s) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """Health checkers often hang up as soon as they read the status line: not worth a traceback."""
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class ReadinessFront:
    """The launcher's readiness endpoint on its own port (a context manager).

    GET /ready: 200 only once started, while not draining, while `healthy()` (every step's stub
    alive, tools.health) and while Triton's /v2/health/ready is 200; else 503.
    GET /live: Triton's /v2/health/live, and 503 once `alive()` is false (a step that keeps dying).
    """

    def __init__(self, triton_http: str, host: str, port: int):
        self.triton_http = triton_http  # host:port of Triton's HTTP endpoint
        # more than Triton knows: whether every step can answer, and whether the replica can heal
        self.healthy: Callable[[], bool] = lambda: True
        self.alive: Callable[[], bool] = lambda: True
        # Triton answers ready before the launcher has loaded any model (explicit model control):
        # readiness waits for the launcher to say it has finished starting
        self.started = threading.Event()
        self.draining = threading.Event()
        self.checked = 0  # /ready requests served: 0 means no balancer routes by this readiness
        front = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0]
                if path == "/ready":
                    front.checked += 1
                    ok = front.ready()
                    text = "ready" if ok else "draining" if front.draining.is_set() else "not ready"
                elif path == "/live":
                    ok = front.live()
                    text = "live" if ok else "not live"
                else:
                    self.send_error(404)
                    return
                body = f"{text}\n".encode()
                self.send_response(200 if ok else 503)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args):  # checks every few hundred ms: keep the console for stages
                pass

        self._httpd = _QuietServer((host, port), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def ready(self) -> bool:
        return (self.started.is_set() and not self.draining.is_set() and self.healthy()
                and http_ok(f"http://{self.triton_http}/v2/health/ready"))

    def start_being_ready(self) -> None:
        """The models are loaded and a stop signal will drain: from now on readiness follows Triton's."""
        self.started.set()

    def live(self) -> bool:
        return self.alive() and http_ok(f"http://{self.triton_http}/v2/health/live")

    def stop_being_ready(self) -> None:
        self.draining.set()

    def start(self) -> "ReadinessFront":
        self._thread.start()
        return self

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> "ReadinessFront":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def triton_activity(metrics_text: str) -> tuple[int, float]:
    """(requests pending in any model, sum of the request and execution counters) from one scrape."""
    from tools.triton_metrics import parse

    models = parse(metrics_text, (PENDING_GAUGE, *ACTIVITY_COUNTERS)).values()
    pending = sum(m.get(PENDING_GAUGE, 0.0) for m in models)
    activity = sum(m.get(name, 0.0) for m in models for name in ACTIVITY_COUNTERS)
    return int(pending), activity


def scrape_activity(metrics_url: str) -> tuple[int, float] | None:
    """Pending requests and activity now; None if the metrics endpoint cannot be read (Triton gone)."""
    try:
        with LOOPBACK_OPENER.open(metrics_url, timeout=2) as response:
            return triton_activity(response.read().decode())
    except (OSError, urllib.error.URLError):
        return None


def wait_until_idle(metrics_url: str, settings: DrainSettings, say: Callable[[str], None] = print) -> dict:
    """Block until nothing is pending and no counter moved for `quiet_s`, or `max_wait_s` passed.

    Returns {"idle": bool, "waited_s": float, "pending_at_end": int}; one line is said each time
    the pending count changes, so a long drain shows progress without flooding the log.
    """
    started = time.monotonic()
    deadline = started + settings.max_wait_s
    last_activity, last_change, last_said = None, started, None
    while True:
        now = time.monotonic()
        sample = scrape_activity(metrics_url)
        if sample is None:  # the server is gone: nothing left to wait for
            return {"idle": True, "waited_s": round(now - started, 2), "pending_at_end": 0}
        pending, activity = sample
        if activity != last_activity:
            last_activity, last_change = activity, now
        if pending != last_said and (pending or last_said is not None):
            say(f"drain: waiting for {pending} request(s) pending in Triton")
            last_said = pending
        if pending == 0 and now - last_change >= settings.quiet_s:
            return {"idle": True, "waited_s": round(now - started, 2), "pending_at_end": 0}
        if now >= deadline:
            return {"idle": False, "waited_s": round(now - started, 2), "pending_at_end": pending}
        time.sleep(settings.poll_s)


def drain_and_stop(server, front: ReadinessFront, settings: DrainSettings,
                   say: Callable[[str], None] = print, before_stop: Callable[[], None] = lambda: None) -> int | None:
    """The four stages, one line each; returns Triton's exit code. `server` is a started
    tools.server.TritonServer; `before_stop` runs just before Triton is stopped (the launcher's
    stub watch reloads a step whose stub died, so Triton stops cleanly). The caller keeps signals
    from interrupting it (tools.server.StopRequests)."""
    front.stop_being_ready()
    say(f"drain: not ready ({front.url}/ready answers 503; Triton keeps serving)")
    if settings.grace_s > 0 and not front.checked:
        # a balancer that never asked is not routing by this readiness: waiting would change nothing
        say(f"drain: skipping the grace: nothing has checked {front.url}/ready")
    elif settings.grace_s > 0:
        say(f"drain: grace {settings.grace_s:g} s for load balancers to stop routing here")
        time.sleep(settings.grace_s)
    idle = wait_until_idle(server.metrics_url, settings, say)
    if idle["idle"]:
        say(f"drain: idle after {idle['waited_s']:g} s (nothing pending, no request for {settings.quiet_s:g} s)")
    else:
        say(f"drain: still {idle['pending_at_end']} pending after the {settings.max_wait_s:g} s cap; stopping anyway")
    before_stop()
    say(f"drain: stopping Triton (SIGTERM; it finishes what is left within {server.exit_timeout_s} s)")
    return server.stop()
