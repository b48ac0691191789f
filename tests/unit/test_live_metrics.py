"""The postprocess model's metric sender (model_repository/postprocess/1/model.py's LiveMetrics),
against a stand-in for the Python backend's metrics API: Triton's own cannot be made to refuse one
series on demand, and that refusal is what is tested here."""

import importlib.util
import sys
import types
from pathlib import Path

import pytest

from compress import detection, shadow

MODEL = Path(__file__).resolve().parents[2] / "model_repository" / "postprocess" / "1" / "model.py"


class Metric:
    def __init__(self, key, refused):
        self.key, self.refused, self.value = key, refused, 0.0

    def increment(self, value):
        if self.key in self.refused:
            raise RuntimeError("metric refused")
        self.value += value

    def set(self, value):
        if self.key in self.refused:
            raise RuntimeError("metric refused")
        self.value = value


def fake_backend(refused: set):
    class MetricFamily:
        COUNTER, GAUGE = "counter", "gauge"

        def __init__(self, name, description, kind):
            self.name, self.made = name, {}

        def Metric(self, labels):  # noqa: N802 - the backend's spelling
            key = self.name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
            self.made[key] = Metric(key, refused)
            return self.made[key]

    class Logger:
        @staticmethod
        def log_warn(text):
            pass

    return types.SimpleNamespace(MetricFamily=MetricFamily, Logger=Logger)


@pytest.fixture
def live_metrics(monkeypatch):
    refused: set = set()
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake_backend(refused))
    monkeypatch.setitem(sys.modules, "yolo_ops", detection)
    spec = importlib.util.spec_from_file_location("postprocess_model_under_test", MODEL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    made = []

    def make():
        metrics = module.LiveMetrics(shadow, {"yolo_gate_mean_confidence": 0.9})
        metrics.stop.set()  # flushed by the test, not by the thread
        metrics.thread.join(timeout=2)
        made.append(metrics)
        return metrics

    return make, refused


def test_one_series_that_cannot_be_sent_does_not_take_the_others_increments(live_metrics):
    make, refused = live_metrics
    metrics = make()
    refused.add("yolo_detections_total")
    metrics.add({"yolo_frames_total": 3, "yolo_detections_total": 5, "yolo_detection_confidence_total": 4.5})
    metrics.add({"yolo_frames_total": 2, "yolo_shadow_rate": 0.05})
    with pytest.raises(RuntimeError, match="1 series not sent .yolo_detections_total"):
        metrics.flush()
    assert metrics.metrics["yolo_frames_total"].value == 5  # added up, then sent
    assert metrics.metrics["yolo_detection_confidence_total"].value == 4.5
    assert metrics.metrics["yolo_shadow_rate"].value == 0.05  # a gauge: set
    assert metrics.metrics["yolo_detections_total"].value == 0
    assert metrics.metrics["yolo_gate_mean_confidence"].value == 0.9
    refused.clear()
    metrics.flush()  # nothing pending: nothing sent twice
    assert metrics.metrics["yolo_frames_total"].value == 5


def test_every_series_exists_from_the_start_and_a_gauge_keeps_its_last_value(live_metrics):
    make, _ = live_metrics
    metrics = make()
    assert set(shadow.every_series()) <= set(metrics.metrics)
    metrics.add({"yolo_shadow_enabled": 1})
    metrics.flush()
    assert metrics.metrics["yolo_shadow_enabled"].value == 1
    metrics.add({"yolo_shadow_enabled": 0, "yolo_frames_total": 2})
    metrics.add({"yolo_shadow_enabled": 1, "yolo_frames_total": 3})  # a gauge's last value, a counter's sum
    metrics.flush()
    assert metrics.metrics["yolo_shadow_enabled"].value == 1 and metrics.metrics["yolo_frames_total"].value == 5
