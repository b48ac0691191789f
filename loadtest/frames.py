"""Per-frame outcomes of a camera-stream run and their summary.

Kept apart from the locustfile: importing locust monkey-patches the whole process with gevent,
which must only happen inside Locust's own processes, never in the CLI or the tests.
"""

from __future__ import annotations

import numpy as np

REJECTED_STATUSES = {"503", "StatusCode.UNAVAILABLE"}
# How gRPC and HTTP clients report a replica that is gone (killed, restarting, unreachable), as
# opposed to a live server shedding load (which answers UNAVAILABLE / 503 with its own message).
CONNECTION_LOST = ("failed to connect", "connection refused", "connection closed", "socket closed", "connection reset",
                   "broken pipe", "connection aborted", "goaway", "unreachable",
                   "stream removed")  # a load balancer resetting the HTTP/2 streams of a backend that died


def frame_status(error: Exception | None) -> str:
    """ok, lost (the replica was unreachable or died with the frame), rejected (the server shed
    load: queue full or queue timeout, 503 / UNAVAILABLE) or error."""
    if error is None:
        return "ok"
    if isinstance(error, OSError) or any(text in str(error).lower() for text in CONNECTION_LOST):
        return "lost"
    status = getattr(error, "status", None)
    return "rejected" if str(status() if callable(status) else "") in REJECTED_STATUSES else "error"


# What Triton says when it sheds a request, by cause (its messages in 2.51)
SHED_CAUSES = {"queue_full": ("exceeds maximum queue size",), "timeout": ("request timeout expired", "timeout")}


def shed_cause(error: Exception | None) -> str | None:
    """queue_full or timeout for a request the server shed, `other` for another rejection."""
    if error is None:
        return None
    text = str(error).lower()
    return next((cause for cause, needles in SHED_CAUSES.items() if any(n in text for n in needles)), "other")


def summarize(frames: list[dict], fps: float, slo_ms: float) -> dict:
    """Throughput, latency percentiles from due time (answered frames), late/dropped/rejected/lost/error
    counts, and the same counts per endpoint when frames went to several.

    Rejected frames (the server shed load) are counted apart from errors, with how fast the
    rejection came back; lost frames (a replica that died or could not be reached) apart from both.
    """
    done = [f for f in frames if f["status"] == "ok"]
    rejected = np.array([f["latency_ms"] for f in frames if f["status"] == "rejected"])
    first_due = min((f["due"] for f in frames), default=0.0)
    last_seen = max((f["due"] + (f["latency_ms"] or 0) / 1e3 for f in frames), default=0.0)
    duration_s = last_seen - first_due
    latencies = np.array([f["latency_ms"] for f in done]) if done else np.zeros(0)
    count = len(frames)
    pct = (lambda q: round(float(np.percentile(latencies, q)), 2)) if len(latencies) else (lambda q: None)
    return {
        "frames_due": count,
        "frames_ok": len(done),
        "errors": sum(f["status"] == "error" for f in frames),
        "lost": sum(f["status"] == "lost" for f in frames),
        "dropped": sum(f["status"] == "dropped" for f in frames),
        "rejected": len(rejected),
        "rejected_share": round(len(rejected) / count, 4) if count else 0.0,
        "rejected_by_cause": {cause: sum(f.get("cause") == cause for f in frames if f["status"] == "rejected")
                              for cause in (*SHED_CAUSES, "other")},
        "rejection_p50_ms": round(float(np.percentile(rejected, 50)), 2) if len(rejected) else None,
        "span_s": round(duration_s, 2),
        "throughput_fps": round(len(done) / duration_s, 2) if duration_s > 0 else None,
        "latency_ms": {"p50": pct(50), "p95": pct(95), "p99": pct(99),
                       "max": round(float(latencies.max()), 2) if len(latencies) else None},
        "late_over_interval": int((latencies > 1e3 / fps).sum()),
        "late_over_slo": int((latencies > slo_ms).sum()),
        "slo_ms": slo_ms,
        "by_endpoint": by_endpoint(frames),
    }


def by_endpoint(frames: list[dict]) -> dict[str, dict[str, int]]:
    """{endpoint: {status: frames}} for the frames that were sent (dropped ones never were)."""
    counts: dict[str, dict[str, int]] = {}
    for frame in frames:
        if frame.get("endpoint"):
            entry = counts.setdefault(frame["endpoint"], {})
            entry[frame["status"]] = entry.get(frame["status"], 0) + 1
    return counts
