"""Watch a running server's live agreement and drift signals, with the alarms (`make watch`).

    python -m tools.watch --metrics-url http://127.0.0.1:8002/metrics [--duration 10m] [--out DIR]

Scrapes the server's /metrics every `--interval` seconds (the counters compress.shadow exports),
prints one line per scrape: frames/s, live box recall and extra-box share against the FP32
reference (with what the gate saw on the val split), detections per frame and mean confidence
(likewise), shadowed / skipped frames, and the alarms of tools.alerts firing now (the same spec
the Prometheus rules are rendered from). The load test runs the same watcher beside its streams.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from compress.errors import ServerError, cli_entry
from tools import alerts, triton_metrics
from tools.periodic import PeriodicSampler, parse_duration

OUTCOME = alerts.OUTCOME


# The alarms look back at most this far (the longest window plus its for:)
LOOKBACK_S = max(a.window_s + a.for_s for a in alerts.ALARMS) + 60


def metrics_url(text: str) -> str:
    """`host:port` or a full URL -> the /metrics URL."""
    text = text.strip()
    if "://" not in text:
        text = f"http://{text}"
    return text if text.rstrip("/").endswith("/metrics") else text.rstrip("/") + "/metrics"


class ShadowWatch(PeriodicSampler):
    """The yolo_* samples of one server over a run; `summary()` and the alarms over them."""

    def __init__(self, metrics_url: str, interval_s: float = 2.0, on_sample=None):
        super().__init__(interval_s, final_sample=True)
        self.url, self.on_sample = metrics_url, on_sample
        self.fired: dict[str, float] = {}  # alarm -> seconds into the run it first fired

    def sample(self) -> dict[str, float]:
        values = triton_metrics.scrape(self.url)
        if self.on_sample is not None and self.samples:
            self.on_sample(self, values)
        return values

    def recent(self) -> list:
        return [s for s in self.samples if s[0] >= self.samples[-1][0] - LOOKBACK_S] if self.samples else []

    def _take(self) -> None:
        super()._take()
        if len(self.samples) >= 2:
            start = self.samples[0][0]
            try:
                verdicts = alerts.firing(self.recent())
            except Exception as error:  # noqa: BLE001 - counted like a failed scrape; the watch goes on
                self.errors += 1
                self.last_error = f"alarms: {type(error).__name__}: {error}"
                return
            for verdict in verdicts:
                if verdict["firing"]:
                    self.fired.setdefault(verdict["alert"], round(self.samples[-1][0] - start, 1))

    def summary(self) -> dict:
        summary = watch_summary(self.samples, self.fired)
        if self.errors:
            summary["sampling_errors"] = {"count": self.errors, "last": self.last_error}
        return summary


def watch_summary(samples: list[tuple[float, dict[str, float]]], fired: dict[str, float] | None = None) -> dict:
    """Live agreement and drift over the samples (counter increases first to last), the gate's values
    and the alarms that fired (seconds into the run)."""
    if len(samples) < 2:
        return {"shadow": False}
    first, last = samples[0][1], samples[-1][1]
    inc = alerts._increases(first, last)

    def ratio(top: str, bottom: str, digits: int = 4):
        return round(inc.get(top, 0) / inc[bottom], digits) if inc.get(bottom) else None

    return {
        "shadow": "yolo_shadow_rate" in last, "seconds": round(samples[-1][0] - samples[0][0], 1),
        "frames": int(inc.get("yolo_frames_total", 0)),
        "compared": int(inc.get(OUTCOME.format("compared"), 0)),
        "skipped_busy": int(inc.get(OUTCOME.format("skipped_busy"), 0)),
        "skipped_cap": int(inc.get(OUTCOME.format("skipped_cap"), 0)),
        "failed": int(inc.get(OUTCOME.format("failed"), 0)),
        "unavailable": int(inc.get(OUTCOME.format("unavailable"), 0)),
        "reference_boxes": int(inc.get("yolo_shadow_reference_boxes_total", 0)),
        "box_recall": ratio("yolo_shadow_found_boxes_total", "yolo_shadow_reference_boxes_total"),
        "extra_boxes": ratio("yolo_shadow_extra_boxes_total", "yolo_shadow_served_boxes_total"),
        "class_flips": ratio("yolo_shadow_class_flips_total", "yolo_shadow_overlapping_boxes_total"),
        "score_drift": ratio("yolo_shadow_score_drift_total", "yolo_shadow_found_boxes_total"),
        "detections_per_frame": ratio("yolo_detections_total", "yolo_frames_total", 3),
        "mean_confidence": ratio("yolo_detection_confidence_total", "yolo_detections_total"),
        "low_agreement_frames": int(inc.get("yolo_shadow_low_agreement_frames_total", 0)),
        "evidence_stored": int(inc.get('yolo_evidence_frames_total{outcome="stored"}', 0)),
        "gate": {key: last.get(name) for key, name in
                 (("box_recall", "yolo_gate_box_recall"), ("extra_boxes", "yolo_gate_extra_boxes"),
                  ("detections_per_frame", "yolo_gate_detections_per_frame"),
                  ("mean_confidence", "yolo_gate_mean_confidence"))},
        "alarms_fired": dict(fired or {}),
    }


def markdown_line(summary: dict) -> str:
    """One line for a load test's summary."""
    if not summary.get("shadow"):
        return "- live agreement: no shadow parity in this repository (built with SHADOW=0)"
    gate = summary["gate"]
    alarms = ", ".join(f"{name} at {t:g} s" for name, t in summary["alarms_fired"].items()) or "none"
    return (f"- live agreement with the FP32 reference (shadow, {summary['compared']} frames compared, "
            f"{summary['skipped_busy']} skipped while busy): box recall {summary['box_recall']} (gate {gate['box_recall']}), "
            f"extra boxes {summary['extra_boxes']} (gate {gate['extra_boxes']}); detections per frame "
            f"{summary['detections_per_frame']} (gate {gate['detections_per_frame']}), mean confidence "
            f"{summary['mean_confidence']} (gate {gate['mean_confidence']}); alarms fired: {alarms}")


def live_line(watch: ShadowWatch, values: dict[str, float]) -> str:
    window = [s for s in watch.samples if s[0] >= time.time() - 30] or watch.samples[-1:]
    summary = watch_summary(window + [(time.time(), values)])
    firing = [v["alert"] for v in alerts.firing(watch.recent() + [(time.time(), values)]) if v["firing"]]
    return (f"[watch] {summary.get('frames', 0) / max(summary.get('seconds', 1), 1e-9):6.1f} frames/s | recall "
            f"{summary.get('box_recall')} extra {summary.get('extra_boxes')} | det/frame {summary.get('detections_per_frame')} "
            f"conf {summary.get('mean_confidence')} | compared {summary.get('compared', 0)} skipped "
            f"{summary.get('skipped_busy', 0)} (last 30 s) | alarms: {', '.join(firing) or 'none'}")


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metrics-url", type=metrics_url, default="http://127.0.0.1:8002/metrics",
                        help="the server's metrics endpoint (host:port or a URL)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between scrapes")
    parser.add_argument("--duration", default="0", help="stop after this long (e.g. 10m; 0: until Ctrl-C)")
    parser.add_argument("--out", type=Path, help="write watch.json (summary and alarms) here at the end")
    args = parser.parse_args(argv)
    duration = None if str(args.duration).strip() in ("", "0") else parse_duration(args.duration)
    try:
        triton_metrics.scrape(args.metrics_url)  # unreachable: one error now, not a silent watch
    except OSError as error:
        raise ServerError(f"cannot read {args.metrics_url}: {error}", hint="is the server running (`make serve`)?") from None
    watch = ShadowWatch(args.metrics_url, args.interval, on_sample=lambda w, v: print(live_line(w, v), flush=True))
    try:
        with watch:
            deadline = time.monotonic() + duration if duration else None
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    summary = watch.summary()
    print(markdown_line(summary))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "watch.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
