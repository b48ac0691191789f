"""Triton Python model `postprocess`: head outputs + letterbox params -> boxes, scores, classes.

Thresholds and image size come from the model config's parameters, the head layout from its input names
(raw `box_logits`/`class_logits` or decoded `output0`). All requests
of one `execute()` call are decoded as one batch, then split back and padded per request. If
that batch fails, each request runs alone, so one bad request (e.g. invalid letterbox
parameters) fails only itself; non-finite head values are dropped as candidates, not errors.
"""

import json
import os
import sys
import threading

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(__file__))
from yolo_ops import head_detections, model_parameters, pad_detections, run_isolated  # noqa: E402  (copied in by the builder)

PARAMETERS = ("conf_threshold", "iou_threshold", "max_det", "image_height", "image_width", "strides")
FLUSH_S = 0.5


class LiveMetrics:
    """Counter increments added up from any thread, sent to Triton's metrics by one thread."""

    def __init__(self, shadow_module, gauges: dict[str, float]):
        kinds = {"counter": pb_utils.MetricFamily.COUNTER, "gauge": pb_utils.MetricFamily.GAUGE}
        self.families = {name: pb_utils.MetricFamily(name=name, description=text, kind=kinds[kind])
                         for name, (kind, text) in shadow_module.METRICS.items()}
        self.gauges = set(shadow_module.GAUGES) | set(gauges)
        self.metrics, self.pending, self.lock = {}, {}, threading.Lock()
        for key in shadow_module.every_series():  # at 0 from the start: a series that never moves still exists
            self._metric(key)
        for name, value in gauges.items():
            self._metric(name).set(float(value))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="metrics-flush", daemon=True)
        self.thread.start()

    def _metric(self, key: str):
        """`name` or `name{label="value"}` -> its Metric (made on first use)."""
        if key not in self.metrics:
            name, _, labels = key.partition("{")
            pairs = dict(part.split("=", 1) for part in labels.rstrip("}").split(",")) if labels else {}
            self.metrics[key] = self.families[name].Metric(labels={k: v.strip('"') for k, v in pairs.items()})
        return self.metrics[key]

    def add(self, deltas: dict) -> None:
        """Counter increments are added up; a gauge's value replaces the pending one."""
        with self.lock:
            for key, value in deltas.items():
                self.pending[key] = value if key in self.gauges else self.pending.get(key, 0) + value

    def flush(self) -> None:
        with self.lock:
            pending, self.pending = self.pending, {}
        failed = []
        for key, value in pending.items():
            try:  # each series on its own: one that cannot be sent does not take the others' increments
                if key in self.gauges:
                    self._metric(key).set(float(value))
                elif value:
                    self._metric(key).increment(float(value))
            except Exception as error:  # noqa: BLE001
                failed.append(f"{key}: {error}")
        if failed:
            raise RuntimeError(f"{len(failed)} series not sent ({failed[0]})")

    def _run(self) -> None:
        while not self.stop.wait(FLUSH_S):
            try:
                self.flush()
            except Exception as error:  # noqa: BLE001 - metrics never fail the model
                pb_utils.Logger.log_warn(f"postprocess: metrics not sent: {error}")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=2)
        self.flush()


def error_response(error):
    code = pb_utils.TritonError.INVALID_ARG if isinstance(error, ValueError) else pb_utils.TritonError.INTERNAL
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"postprocess: {error}", code))


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = model_parameters(config, PARAMETERS)
        self.conf = float(params["conf_threshold"])
        self.iou = float(params["iou_threshold"])
        self.max_det = int(params["max_det"])
        self.size = (int(params["image_height"]), int(params["image_width"]))
        self.strides = tuple(int(s) for s in params["strides"].split(","))
        self.head_names = [i["name"] for i in config["input"] if i["name"] not in ("LETTERBOX", "PIXELS")]
        self.shadow = self.live = None
        self._answered = []
        # Triton runs the warmup samples before the model serves: not traffic, so not watched
        self.unwatched = sum(int(w.get("batch_size", 1)) * int(w.get("count", 1)) for w in config.get("model_warmup", []))
        if any(i["name"] == "PIXELS" for i in config["input"]):
            try:
                self._start_shadow(args, params)
            except Exception as error:  # noqa: BLE001 - no shadow (or no metrics API: Triton < 23.05) is never a failed model
                pb_utils.Logger.log_warn(f"postprocess: shadow parity and drift signals off: {type(error).__name__}: {error}")
                for part in (self.shadow, self.live):
                    try:
                        if part is not None:
                            part.close()
                    except Exception:  # noqa: BLE001
                        pass
                self.shadow = self.live = None

    def _start_shadow(self, args, params):
        import shadow

        settings = shadow.ShadowSettings.from_parameters(params)
        model_dir = os.path.dirname(__file__)
        settings.evidence_dir = shadow.resolve_evidence_dir(settings.evidence_dir, args["model_repository"])
        gauges = {name: params[f"gate_{key}"] for key, name in shadow.GATE_GAUGES.items() if f"gate_{key}" in params}
        self.live = LiveMetrics(shadow, {**gauges, "yolo_shadow_rate": settings.rate})
        head = {"image_size": list(self.size), "strides": list(self.strides), "conf": self.conf, "iou": self.iou,
                "max_det": self.max_det}
        self.shadow_module = shadow
        self.shadow = shadow.Shadow(settings, model_dir, head, self.live.add, log=pb_utils.Logger.log_info)
        self.live.add({"yolo_shadow_enabled": int(self.shadow.available)})

    def finalize(self):
        if self.shadow is not None:
            self.shadow.close()
            self.live.close()

    def _run_batch(self, requests):
        heads = {name: [] for name in self.head_names}
        letterboxes, counts = [], []
        for request in requests:
            for name in self.head_names:
                heads[name].append(pb_utils.get_input_tensor_by_name(request, name).as_numpy())
            letterboxes.append(pb_utils.get_input_tensor_by_name(request, "LETTERBOX").as_numpy())
            counts.append(len(letterboxes[-1]))
        stacked = {name: np.concatenate(parts) for name, parts in heads.items()}
        letterbox = np.concatenate(letterboxes)
        detections = head_detections(stacked, letterbox, self.size, self.strides, self.conf, self.iou, self.max_det)
        responses, start = [], 0
        for count in counts:
            padded = pad_detections(detections[start:start + count])
            start += count
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(name, value) for name, value in padded.items()]))
        if self.shadow is not None:  # watched once the whole batch has its answers: a retried request is not counted twice
            self._answered.append((requests, counts, stacked, letterbox, detections))
        return responses

    def _watch(self, requests, counts, heads, letterbox, detections):
        """Drift signals of every frame; the sampled ones handed to the shadow (never raises). A
        frame's pixels are read only when it is handed over."""
        if self.unwatched > 0:
            self.unwatched -= len(detections)
            return
        try:
            self.live.add(self.shadow_module.drift_tally(detections))
            if self.shadow.settings.rate <= 0:
                return
            row = 0
            for request, count in zip(requests, counts):
                for i in range(count):
                    self.shadow.offer(lambda r=request, i=i: pb_utils.get_input_tensor_by_name(r, "PIXELS").as_numpy()[i],
                                      letterbox[row], {name: value[row] for name, value in heads.items()})
                    row += 1
        except Exception as error:  # noqa: BLE001 - watching never fails a served frame
            pb_utils.Logger.log_warn(f"postprocess: shadow skipped a batch: {error}")

    def execute(self, requests):
        self._answered = []
        with np.errstate(all="ignore"):  # overflow in exp() on extreme logits is handled as non-finite
            responses = run_isolated(requests, self._run_batch, error_response)
        for answered in self._answered:
            self._watch(*answered)
        return responses
