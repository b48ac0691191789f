"""The alarms: the committed Prometheus rules are the spec's rendering, promtool's unit tests pass
on the synthetic scenarios, and `make watch`'s evaluator reaches the same verdicts on them."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from tools import alerts


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is not installed: run `make promtool` (Debian's prometheus package)"
    return found


def run_promtool(tmp_path: Path, groups: dict) -> subprocess.CompletedProcess:
    (tmp_path / alerts.RULE_GROUPS_FILE).write_text(yaml.safe_dump(groups, sort_keys=False, width=200))
    shutil.copyfile(alerts.RULES_TEST_FILE, tmp_path / "test.yaml")
    checked = subprocess.run([promtool(), "check", "rules", alerts.RULE_GROUPS_FILE], cwd=tmp_path,
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    return subprocess.run([promtool(), "test", "rules", "test.yaml"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)


def test_committed_rules_and_tests_are_the_rendering():
    assert alerts.RULES_FILE.read_text() == alerts.rendered(), "run `python -m tools.alerts render`"
    assert alerts.RULES_TEST_FILE.read_text() == alerts.rendered_tests(), "run `python -m tools.alerts render`"
    shipped = yaml.safe_load(alerts.RULES_FILE.read_text())
    assert shipped["kind"] == "PrometheusRule" and shipped["spec"] == alerts.rule_groups()
    kustomization = yaml.safe_load((alerts.RULES_FILE.parent / "kustomization.yaml").read_text())
    assert alerts.RULES_FILE.name in kustomization["resources"]


def test_promtool_passes_the_scenarios(tmp_path):
    result = run_promtool(tmp_path, alerts.rule_groups())
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_promtool_fails_rules_that_would_fire_late(tmp_path):
    """The scenarios catch a wrong rule: the agreement alarm waiting 10 minutes misses the degraded case."""
    late = [replace(a, for_s=600) if a.name == "YoloShadowAgreementLow" else a for a in alerts.ALARMS]
    groups = {"groups": [{"name": alerts.GROUP, "rules": [a.rule() for a in late]}]}
    result = run_promtool(tmp_path, groups)
    assert result.returncode != 0 and "YoloShadowAgreementLow" in result.stdout + result.stderr


@pytest.mark.parametrize("scenario", sorted(alerts.SCENARIOS))
def test_watch_fires_what_prometheus_fires(scenario):
    _, _, expected = alerts.SCENARIOS[scenario]
    for minute, wanted in expected.items():
        verdicts = alerts.firing(alerts.scenario_history(scenario, minute))
        assert {v["alert"] for v in verdicts if v["firing"]} == wanted, (scenario, minute, verdicts)


def test_an_alarm_needs_enough_frames_and_its_whole_for_duration():
    agreement = next(a for a in alerts.ALARMS if a.name == "YoloShadowAgreementLow")
    gauges = {"yolo_gate_box_recall": 0.95}
    few = {"yolo_shadow_reference_boxes_total": 5, "yolo_shadow_found_boxes_total": 0}
    assert agreement.breached(few, gauges) == (False, None)  # 5 boxes: no verdict
    many = {"yolo_shadow_reference_boxes_total": 100, "yolo_shadow_found_boxes_total": 70}
    assert agreement.breached(many, gauges) == (True, 0.7)
    assert agreement.breached(many, {}) == (False, 0.7)  # no gate value exported: nothing to compare with
    # degraded for less than for_s: pending, not firing
    history = alerts.scenario_history("degraded", 5.25)
    assert not any(v["firing"] for v in alerts.firing(history))
