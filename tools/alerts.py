"""The alarms on the served model's live agreement and drift: one spec, two evaluators.

`ALARMS` holds every alarm once: which counters it divides, over what window, against which of
the gate's gauges (compress.shadow.GATE_GAUGES: what the gate saw on the val split, exported by
the server), by what margin and for how long. From it come
- the Prometheus alerting rules shipped with the Kubernetes manifests
  (deploy/k8s/monitoring/yolo-alerts.yaml, a PrometheusRule; `python -m tools.alerts render`
  writes it, a test checks the committed file is the rendering, promtool tests it on synthetic
  series: deploy/k8s/monitoring/tests/yolo-alerts-test.yaml);
- `make watch`'s evaluation of the same alarms on scrapes of one server (`firing`).

    python -m tools.alerts render      # rewrite yolo-alerts.yaml and its promtool test from ALARMS, SCENARIOS
    python -m tools.alerts rules-file  # the rules as a plain rule file beside the test, for promtool
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from compress.env import PROJECT_ROOT
from compress.errors import cli_entry

RULES_FILE = PROJECT_ROOT / "deploy" / "k8s" / "monitoring" / "yolo-alerts.yaml"
RULES_TEST_FILE = PROJECT_ROOT / "deploy" / "k8s" / "monitoring" / "tests" / "yolo-alerts-test.yaml"
GROUP = "yolo-served-model"
BY = "namespace"  # pooled over a deployment's replicas


@dataclass(frozen=True)
class Alarm:
    name: str
    severity: str
    summary: str
    numerator: tuple[str, ...]  # counters summed: their increase over the window ...
    denominator: tuple[str, ...]  # ... divided by these'
    window_s: int
    for_s: int
    # fires when the ratio is below / above the gate's gauge (or `constant`) by `margin`, or shifted
    # from it either way ("shifted"; `relative`: by margin x the gauge)
    direction: str
    margin: float
    gauge: str | None = None
    constant: float | None = None
    relative: bool = False
    min_denominator: float = 1.0  # too few frames or boxes in the window: no verdict

    def threshold(self, gauge_value: float | None) -> float | None:
        base = self.constant if self.gauge is None else gauge_value
        if base is None:
            return None
        return base * self.margin if self.relative else self.margin

    # -- PromQL ---------------------------------------------------------------------------------
    def _increase(self, names: tuple[str, ...]) -> str:
        return " + ".join(f"sum by ({BY}) (increase({n}[{self.window_s}s]))" for n in names)

    def expr(self) -> str:
        ratio = f"({self._increase(self.numerator)}) / ({self._increase(self.denominator)})"
        base = f"max by ({BY}) ({self.gauge})" if self.gauge else str(self.constant)
        margin = f"{self.margin} * {base}" if self.relative else str(self.margin)
        if self.direction == "below":
            condition = f"{ratio} < ({base} - {margin})"
        elif self.direction == "above":
            condition = f"{ratio} > ({base} + {margin})"
        else:
            condition = f"abs({ratio} - {base}) > ({margin})"
        return f"({condition}) and ({self._increase(self.denominator)}) >= {self.min_denominator:g}"

    def rule(self) -> dict:
        return {"alert": self.name, "expr": self.expr(), "for": f"{self.for_s}s",
                "labels": {"severity": self.severity},
                "annotations": {"summary": self.summary,
                                "description": "in {{ $labels.namespace }} "
                                               f"(over {self.window_s}s; see `make audit` for the frames)"}}

    # -- one server's scrapes -------------------------------------------------------------------
    def ratio(self, increases: dict[str, float]) -> tuple[float | None, float]:
        """(ratio, denominator) of counter increases over the window; None below min_denominator."""
        denominator = sum(increases.get(n, 0.0) for n in self.denominator)
        if denominator < self.min_denominator or denominator <= 0:
            return None, denominator
        return sum(increases.get(n, 0.0) for n in self.numerator) / denominator, denominator

    def breached(self, increases: dict[str, float], gauges: dict[str, float]) -> tuple[bool, float | None]:
        value, _ = self.ratio(increases)
        base = self.constant if self.gauge is None else gauges.get(self.gauge)
        if value is None or base is None:
            return False, value
        margin = self.margin * base if self.relative else self.margin
        if self.direction == "below":
            return value < base - margin, value
        if self.direction == "above":
            return value > base + margin, value
        return abs(value - base) > margin, value



OUTCOME = 'yolo_shadow_frames_total{{outcome="{}"}}'
ALARMS = (
    Alarm("YoloShadowAgreementLow", "critical",
          "The served model finds fewer of the FP32 reference's boxes on live frames than the gate saw",
          ("yolo_shadow_found_boxes_total",), ("yolo_shadow_reference_boxes_total",), window_s=60, for_s=30,
          direction="below", gauge="yolo_gate_box_recall", margin=0.15, min_denominator=20),
    Alarm("YoloShadowExtraBoxesHigh", "critical",
          "The served model reports boxes the FP32 reference does not, on live frames, beyond what the gate saw",
          ("yolo_shadow_extra_boxes_total",), ("yolo_shadow_served_boxes_total",), window_s=60, for_s=30,
          direction="above", gauge="yolo_gate_extra_boxes", margin=0.15, min_denominator=20),
    Alarm("YoloShadowScoreDrift", "critical",
          "The served model's scores moved away from the FP32 reference's on the boxes both find, beyond what the gate saw",
          ("yolo_shadow_score_drift_total",), ("yolo_shadow_found_boxes_total",), window_s=60, for_s=30,
          direction="above", gauge="yolo_gate_score_drift", margin=0.1, min_denominator=20),
    Alarm("YoloDetectionsPerFrameShifted", "warning",
          "Detections per frame moved away from what the gate saw on the val split (scene or camera drift)",
          ("yolo_detections_total",), ("yolo_frames_total",), window_s=120, for_s=60,
          direction="shifted", gauge="yolo_gate_detections_per_frame", margin=0.5, relative=True,
          min_denominator=100),
    Alarm("YoloConfidenceShifted", "warning",
          "The served detections' mean confidence moved away from what the gate saw on the val split",
          ("yolo_detection_confidence_total",), ("yolo_detections_total",), window_s=120, for_s=60,
          direction="shifted", gauge="yolo_gate_mean_confidence", margin=0.1, min_denominator=100),
    Alarm("YoloShadowMostlySkipped", "warning",
          "Shadow parity skips most sampled frames (the server is busy): live agreement rests on few frames",
          (OUTCOME.format("skipped_busy"),), (OUTCOME.format("skipped_busy"), OUTCOME.format("compared")),
          window_s=300, for_s=300, direction="above", constant=0.0, margin=0.8, min_denominator=20),
    Alarm("YoloShadowUnavailable", "warning",
          "Shadow parity is on but its reference is not running (failed to load, or its worker exited)",
          (OUTCOME.format("unavailable"),), (OUTCOME.format("unavailable"),), window_s=120, for_s=60,
          direction="above", constant=0.0, margin=0.5, min_denominator=1),
)


# -- synthetic series both evaluators are tested on (promtool and `firing`) -------------------------------
STEP_S = 15
GATE = {"yolo_gate_box_recall": 0.95, "yolo_gate_extra_boxes": 0.05, "yolo_gate_score_drift": 0.01,
        "yolo_gate_detections_per_frame": 2.0, "yolo_gate_mean_confidence": 0.6}


def _healthy(step: int) -> dict[str, float]:
    """Per-step increments of a healthy server at 10 frames/s: 150 frames, 2 boxes each, 20 compared."""
    return {"yolo_frames_total": 150, "yolo_detections_total": 300, "yolo_detection_confidence_total": 180,
            "yolo_shadow_reference_boxes_total": 40, "yolo_shadow_found_boxes_total": 38,
            "yolo_shadow_served_boxes_total": 40, "yolo_shadow_extra_boxes_total": 2,
            "yolo_shadow_score_drift_total": 38 * 0.01, OUTCOME.format("compared"): 20, OUTCOME.format("skipped_busy"): 1}


def _degraded(step: int) -> dict[str, float]:
    """From 5 minutes on, the served model loses most of the reference's boxes and invents others."""
    rates = _healthy(step)
    if step * STEP_S >= 300:
        rates.update({"yolo_shadow_found_boxes_total": 16, "yolo_shadow_extra_boxes_total": 24,
                      "yolo_shadow_score_drift_total": 16 * 0.05})
    return rates


def _rescored(step: int) -> dict[str, float]:
    """From 5 minutes on, the served model still finds the reference's boxes, at much lower scores
    (seen with an INT8 calibrated on blank frames: recall 0.99, mean confidence 0.92 -> 0.55)."""
    rates = _healthy(step)
    if step * STEP_S >= 300:
        rates.update({"yolo_shadow_score_drift_total": 38 * 0.37, "yolo_detection_confidence_total": 300 * 0.3})
    return rates


def _darkened(step: int) -> dict[str, float]:
    """From 5 minutes on, darker frames: fewer and less confident detections."""
    rates = _healthy(step)
    if step * STEP_S >= 300:
        rates.update({"yolo_detections_total": 120, "yolo_detection_confidence_total": 42,
                      "yolo_shadow_served_boxes_total": 16, "yolo_shadow_reference_boxes_total": 18,
                      "yolo_shadow_found_boxes_total": 16, "yolo_shadow_extra_boxes_total": 1})
    return rates


def _collapsed(step: int) -> dict[str, float]:
    """A served model that never finds the reference's boxes, from the first frame on: the found
    counter never moves (it exists at 0: the server creates every series when it loads)."""
    return {**_healthy(step), "yolo_shadow_found_boxes_total": 0, "yolo_shadow_extra_boxes_total": 40}


def _busy(step: int) -> dict[str, float]:
    return {**_healthy(step), OUTCOME.format("compared"): 2, OUTCOME.format("skipped_busy"): 19}


def _reference_down(step: int) -> dict[str, float]:
    rates = {k: v for k, v in _healthy(step).items() if not k.startswith("yolo_shadow")}
    return {**rates, OUTCOME.format("unavailable"): 5}


def _degraded_and_darkened(step: int) -> dict[str, float]:
    return {**_darkened(step), **{k: v for k, v in _degraded(step).items() if k.startswith("yolo_shadow")}}


# name -> (per-step increments, minutes of series, {minute: alarms expected firing then})
SCENARIOS = {
    "healthy": (_healthy, 12, {11: set()}),
    "degraded": (_degraded, 12, {4: set(), 7: {"YoloShadowAgreementLow", "YoloShadowExtraBoxesHigh"}}),
    "darkened": (_darkened, 12, {4: set(), 9: {"YoloDetectionsPerFrameShifted", "YoloConfidenceShifted"}}),
    "collapsed": (_collapsed, 4, {2: {"YoloShadowAgreementLow", "YoloShadowExtraBoxesHigh"}}),
    "rescored": (_rescored, 12, {4: set(), 8: {"YoloShadowScoreDrift", "YoloConfidenceShifted"}}),
    "busy": (_busy, 12, {4: set(), 11: {"YoloShadowMostlySkipped"}}),
    "reference_down": (_reference_down, 6, {4: {"YoloShadowUnavailable"}}),
    # built without the gate's values (no val split to measure them on): the server exports no
    # yolo_gate_* gauge, so the alarms held against them stay silent rather than fire on a baseline of 0
    "no_gate_values": (_degraded_and_darkened, 12, {4: set(), 9: set()}),
}
WITHOUT_GATE_VALUES = {"no_gate_values"}


def scenario_series(name: str) -> dict[str, list[float]]:
    """Counter values per step (and the gate's gauges), from 0; every series the server creates
    at load exists from the start (compress.shadow.every_series)."""
    from compress.shadow import every_series

    rates, minutes, _ = SCENARIOS[name]
    steps = minutes * 60 // STEP_S
    series: dict[str, list[float]] = {key: [value] * (steps + 1) for key, value in GATE.items()
                                      if name not in WITHOUT_GATE_VALUES}
    for key in every_series():
        if key.endswith("_total") or "_total{" in key:
            series.setdefault(key, [0.0] * (steps + 1))
    totals: dict[str, float] = {}
    for step in range(steps + 1):
        increments = rates(step) if step else {}
        keys = set(totals) | set(increments) | set(rates(0))
        for key in keys:
            totals[key] = totals.get(key, 0.0) + increments.get(key, 0.0)
            series.setdefault(key, [0.0] * (steps + 1))[step] = totals[key]
    return series


def scenario_history(name: str, until_minute: float) -> list[tuple[float, dict[str, float]]]:
    """The scenario as `make watch` would have scraped it: (seconds, samples) up to `until_minute`."""
    series = scenario_series(name)
    steps = int(until_minute * 60 // STEP_S)
    return [(step * STEP_S, {key: values[step] for key, values in series.items()}) for step in range(steps + 1)]


def _with_namespace(key: str) -> str:
    name, _, labels = key.partition("{")
    return f'{name}{{namespace="yolo"{("," + labels.rstrip("}")) if labels else ""}}}'


def promtool_tests(rule_file: str) -> dict:
    """promtool's unit-test file for SCENARIOS (`promtool test rules`)."""
    tests = []
    for name, (_, _, expected) in SCENARIOS.items():
        series = scenario_series(name)
        cases = []
        for minute, firing_now in expected.items():
            for alarm in ALARMS:
                exp = [{"exp_labels": {"severity": alarm.severity, "namespace": "yolo"},
                        "exp_annotations": alarm.rule()["annotations"] | {
                            "description": f"in yolo (over {alarm.window_s}s; see `make audit` for the frames)"}}]
                cases.append({"eval_time": f"{minute}m", "alertname": alarm.name,
                              "exp_alerts": exp if alarm.name in firing_now else []})
        tests.append({"name": name, "interval": f"{STEP_S}s",
                      "input_series": [{"series": _with_namespace(key), "values": " ".join(f"{v:g}" for v in values)}
                                       for key, values in sorted(series.items())],
                      "alert_rule_test": cases})
    return {"rule_files": [rule_file], "evaluation_interval": f"{STEP_S}s", "tests": tests}


def rule_groups() -> dict:
    return {"groups": [{"name": GROUP, "rules": [alarm.rule() for alarm in ALARMS]}]}


def prometheus_rule() -> dict:
    """The PrometheusRule (Prometheus Operator) carrying `rule_groups()`."""
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": "yolo-served-model", "labels": {"release": "prometheus"}},
            "spec": rule_groups()}


def rendered() -> str:
    import yaml

    header = ("# Generated by `python -m tools.alerts render` from tools/alerts.py (ALARMS): edit there.\n"
              "# Alarms on the served model's live agreement with its FP32 reference and on drift, against\n"
              "# the values the parity gate saw (gauges the server exports). Tested by promtool:\n"
              "# tests/yolo-alerts-test.yaml.\n")
    return header + yaml.safe_dump(prometheus_rule(), sort_keys=False, width=200)


def firing(history: list[tuple[float, dict[str, float]]]) -> list[dict]:
    """The alarms of `ALARMS` breached on one server's scrapes (time, samples), oldest first: each
    alarm's window is the scrapes within window_s of the last one, and it fires when breached at
    every scrape over its last for_s (as Prometheus' `for:` does)."""
    if len(history) < 2:
        return []
    results = []
    for alarm in ALARMS:
        now = history[-1][0]
        verdicts = []
        for at, values in history:
            if at < now - alarm.for_s:
                continue
            window = [(t, v) for t, v in history if at - alarm.window_s <= t <= at]
            if len(window) < 2:
                verdicts.append((False, None))
                continue
            increases = _increases(window[0][1], values)
            verdicts.append(alarm.breached(increases, values))
        covered = history[-1][0] - min(at for at, _ in history) >= alarm.for_s
        results.append({"alert": alarm.name, "severity": alarm.severity,
                         "firing": bool(verdicts) and covered and all(b for b, _ in verdicts),
                         "value": verdicts[-1][1] if verdicts else None, "summary": alarm.summary})
    return results


def _increases(first: dict[str, float], last: dict[str, float]) -> dict[str, float]:
    """Counter increases; a counter that went down was reset (a model reload): its new value is the increase."""
    return {key: (value - first.get(key, 0.0)) if value >= first.get(key, 0.0) else value for key, value in last.items()}


def rendered_tests() -> str:
    import yaml

    header = ("# Generated by `python -m tools.alerts render` from tools/alerts.py (SCENARIOS): synthetic series\n"
              "# the alarms are tested on. Run: promtool test rules deploy/k8s/monitoring/tests/yolo-alerts-test.yaml\n"
              "# (after `python -m tools.alerts rules-file`, which writes the PrometheusRule's groups beside it).\n")
    return header + yaml.safe_dump(promtool_tests(RULE_GROUPS_FILE), sort_keys=False, width=100000)


RULE_GROUPS_FILE = "yolo-alerts.rules.yaml"  # the PrometheusRule's spec as a plain rule file, beside the test


def write_rule_groups(folder: Path) -> Path:
    import yaml

    path = Path(folder) / RULE_GROUPS_FILE
    path.write_text(yaml.safe_dump(rule_groups(), sort_keys=False, width=200))
    return path


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["render", "rules-file"])
    args = parser.parse_args(argv)
    if args.command == "rules-file":
        print(f"wrote {write_rule_groups(RULES_TEST_FILE.parent)}")
        return
    RULES_FILE.write_text(rendered())
    RULES_TEST_FILE.parent.mkdir(parents=True, exist_ok=True)
    RULES_TEST_FILE.write_text(rendered_tests())
    print(f"wrote {RULES_FILE} ({len(ALARMS)} alarms) and {RULES_TEST_FILE} ({len(SCENARIOS)} scenarios)")


if __name__ == "__main__":
    main()
