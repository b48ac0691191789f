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

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(__file__))
from yolo_ops import head_detections, model_parameters, pad_detections, run_isolated  # noqa: E402  (copied in by the builder)

PARAMETERS = ("conf_threshold", "iou_threshold", "max_det", "image_height", "image_width", "strides")


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
        self.head_names = [i["name"] for i in config["input"] if i["name"] != "LETTERBOX"]

    def _run_batch(self, requests):
        heads = {name: [] for name in self.head_names}
        letterboxes, counts = [], []
        for request in requests:
            for name in self.head_names:
                heads[name].append(pb_utils.get_input_tensor_by_name(request, name).as_numpy())
            letterboxes.append(pb_utils.get_input_tensor_by_name(request, "LETTERBOX").as_numpy())
            counts.append(len(letterboxes[-1]))
        stacked = {name: np.concatenate(parts) for name, parts in heads.items()}
        detections = head_detections(stacked, np.concatenate(letterboxes), self.size, self.strides, self.conf,
                                     self.iou, self.max_det)
        responses, start = [], 0
        for count in counts:
            padded = pad_detections(detections[start:start + count])
            start += count
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(name, value) for name, value in padded.items()]))
        return responses

    def execute(self, requests):
        with np.errstate(all="ignore"):  # overflow in exp() on extreme logits is handled as non-finite
            return run_isolated(requests, self._run_batch, error_response)
