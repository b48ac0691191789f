"""Locust users that behave like cameras: each user is one stream of frames at a fixed rate.

Open loop: frame k of a stream is due at start + phase + k / fps whether or not earlier replies
came back, and its latency is measured from that due time, so a slow server shows growing
latency instead of a quietly lower send rate. A stream with `--max-in-flight` frames pending
drops the next frame and counts it. Phases are staggered across streams by default.

Several endpoints (`--endpoints a:8001,b:8001`, replicas without a load balancer in front):
stream k (ids unique across Locust worker processes) starts on endpoint k mod n; a frame whose replica is gone counts as lost, and its
stream moves on to the next endpoint not seen down in the last few seconds.

Run through `python -m loadtest.run` (`make loadtest`), or plain `locust -f loadtest/locustfile.py`
with the options below. Per-frame records reach the master in distributed mode and are written
to `--records` when the test stops.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import gevent
import gevent.lock
from locust import User, events, task

from compress.errors import BadImageError
from loadtest.frames import frame_status, shed_cause
from tools.client import TritonDetectorClient, collect_images, encoded_batch, model_input_size, shrink_to_model

FRAMES: list[dict] = []  # per-process frame records; workers ship theirs to the master
_STREAM_COUNTER = iter(range(1_000_000))
DOWN_FOR_S = 5.0  # an endpoint that lost a frame is skipped by failing-over streams for this long
_DOWN_UNTIL: dict[str, float] = {}


@events.init_command_line_parser.add_listener
def _options(parser):
    parser.add_argument("--fps", type=float, default=10.0, help="frames per second per stream")
    parser.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    parser.add_argument("--model", default="yolo")
    parser.add_argument("--images", default="", help="folder or .txt list of frames (default: the dataset's val split)")
    parser.add_argument("--max-in-flight", type=int, default=2, help="pending frames per stream before dropping")
    parser.add_argument("--phase", choices=["staggered", "sync"], default="staggered")
    parser.add_argument("--streams-hint", type=int, default=1, help="stream count, to spread staggered phases")
    parser.add_argument("--workers-hint", type=int, default=1,
                        help="Locust worker processes (1 without workers): stream ids interleave across them")
    parser.add_argument("--records", default="", help="write per-frame records (JSON) here when the test stops")
    parser.add_argument("--request-timeout", type=float, default=10.0)
    parser.add_argument("--endpoints", default="", help="comma-separated host:port list (default: --host)")
    parser.add_argument("--resize-to-model", action="store_true",
                        help="send frames shrunk to the model input on the camera side (shrunk once, before the run)")
    parser.add_argument("--stream-seconds", type=float, default=0.0,
                        help="schedule frames for this long per stream, then wait for replies (0: until stopped)")


@events.init.add_listener
def _grpc_with_gevent(environment, **_kwargs):
    if getattr(environment.parsed_options, "protocol", "grpc") == "grpc":
        import grpc.experimental.gevent as grpc_gevent

        grpc_gevent.init_gevent()  # grpc's own threads must cooperate with Locust's greenlets


_SHRUNK: dict[str, list[bytes]] = {}
# One stream shrinks the frames while the others wait: streams spawned during the first one's
# network call would each shrink them again, blocking the event loop while earlier streams' frames
# fall due (late frames that are the load generator's, not the server's).
_SHRINKING = gevent.lock.BoundedSemaphore()


def load_frames(folder: str) -> list[bytes]:
    paths = collect_images([Path(folder)])[:64]
    return [p.read_bytes() for p in paths]


def shrunk_frames(folder: str, client: TritonDetectorClient) -> list[bytes]:
    """The frames as a camera that resizes to the model input would send them (once per process)."""
    with _SHRINKING:
        if folder not in _SHRUNK:
            size = model_input_size(client)
            _SHRUNK[folder] = [_shrunk_or_as_is(frame, size) for frame in load_frames(folder)]
    return _SHRUNK[folder]


def _shrunk_or_as_is(frame: bytes, size: tuple[int, int]) -> bytes:
    """A frame the camera side cannot decode is sent as it is: the server refuses it, counted."""
    try:
        return shrink_to_model(frame, size)[0]
    except BadImageError:
        return frame


def stream_id(environment) -> int:
    """An id unique across worker processes: the k-th stream of worker w of W is k * W + w, so ids
    (and the phases and endpoints picked from them) interleave as Locust spreads users evenly."""
    runner = environment.runner
    worker = max(getattr(runner, "worker_index", 0), 0) if type(runner).__name__ == "WorkerRunner" else 0
    return next(_STREAM_COUNTER) * max(1, environment.parsed_options.workers_hint) + worker


class CameraStream(User):
    """One camera: an open-loop schedule of encoded frames to the ensemble."""

    abstract = False

    def on_start(self):
        options = self.environment.parsed_options
        self.options = options
        self.stream_id = stream_id(self.environment)
        self.frames = load_frames(options.images)
        self.endpoints = [e.strip() for e in (options.endpoints or self.host).split(",") if e.strip()]
        self.endpoints = [e.replace("http://", "").replace("grpc://", "") for e in self.endpoints]
        self.clients: list[TritonDetectorClient] = []
        self._connect(self.stream_id % len(self.endpoints))
        if options.resize_to_model:
            self.frames = shrunk_frames(options.images, self.client)
        self.interval = 1.0 / options.fps
        phase = 0.0
        if options.phase == "staggered":
            phase = self.interval * (self.stream_id % max(1, options.streams_hint)) / max(1, options.streams_hint)
        self.start = time.time() + phase
        self.in_flight = 0

    def _connect(self, endpoint_index: int):
        self.endpoint_index = endpoint_index
        self.client = TritonDetectorClient(self.endpoints[endpoint_index], self.options.protocol, self.options.model,
                                           timeout_s=self.options.request_timeout,
                                           concurrency=self.options.max_in_flight)
        self.clients.append(self.client)

    def _fail_over(self, lost_index: int):
        """The replica at `lost_index` is gone: mark it down, move to the next one not down."""
        now = time.time()
        _DOWN_UNTIL[self.endpoints[lost_index]] = now + DOWN_FOR_S
        if lost_index != self.endpoint_index or len(self.endpoints) == 1:
            return  # another frame of this stream already moved it
        for step in range(1, len(self.endpoints)):
            candidate = (lost_index + step) % len(self.endpoints)
            if _DOWN_UNTIL.get(self.endpoints[candidate], 0.0) <= now:
                self._connect(candidate)
                return

    def on_stop(self):
        for client in self.clients:
            client.close()

    def _send(self, index: int, due: float):
        self.in_flight += 1
        error = None
        client, endpoint_index = self.client, self.endpoint_index
        try:
            client.infer_raw({"IMAGE": encoded_batch([self.frames[index % len(self.frames)]])})
        except Exception as exc:  # any failure is a failed frame, reported to Locust
            error = exc
        finally:
            self.in_flight -= 1
        done = time.time()
        latency_ms = (done - due) * 1e3
        status = frame_status(error)
        if status == "lost":
            self._fail_over(endpoint_index)
        FRAMES.append({"stream": self.stream_id, "due": due, "latency_ms": latency_ms, "status": status,
                       "endpoint": self.endpoints[endpoint_index],
                       **({"cause": shed_cause(error)} if status == "rejected" else {})})
        self.environment.events.request.fire(request_type=self.options.protocol, name="frame",
                                             response_time=latency_ms, response_length=0, exception=error,
                                             context={})

    @task
    def stream(self):
        index = 0
        end = self.start + self.options.stream_seconds if self.options.stream_seconds > 0 else float("inf")
        while True:
            due = self.start + index * self.interval
            if due >= end:
                break
            delay = due - time.time()
            if delay > 0:
                gevent.sleep(delay)
            if self.in_flight >= self.options.max_in_flight:
                FRAMES.append({"stream": self.stream_id, "due": due, "latency_ms": None, "status": "dropped"})
            else:
                gevent.spawn(self._send, index, due)
            index += 1
        while self.in_flight:  # the schedule is over: let the replies land, then idle until stopped
            gevent.sleep(0.05)
        gevent.sleep(3600)


@events.report_to_master.add_listener
def _ship_frames(client_id, data):
    data["frames"] = FRAMES[:]
    FRAMES.clear()


@events.worker_report.add_listener
def _collect_frames(client_id, data):
    FRAMES.extend(data.get("frames", []))


@events.quitting.add_listener
def _write_records(environment, **_kwargs):
    path = getattr(environment.parsed_options, "records", "")
    if path and not (environment.runner and environment.runner.__class__.__name__ == "WorkerRunner"):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(FRAMES))
