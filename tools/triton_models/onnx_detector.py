"""Triton Python model `detector` for the `local` target: ONNX Runtime inside the Python backend.

The local server (from the nvidia-pytriton wheel) has no onnxruntime backend, so this runs the
same model.onnx the NGC `onnxruntime_onnx` target serves. All requests of one `execute()`
call run as one ONNX Runtime batch, so Triton's dynamic batching pays off; if that batch
fails, each request runs alone so that one bad request fails only itself.
"""

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(__file__))
from onnx_session import create_session  # noqa: E402  (both copied in by the repository builder)
from yolo_ops import run_isolated, share_of_cores  # noqa: E402


def error_response(error):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"detector: {error}", pb_utils.TritonError.INTERNAL))


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = os.path.join(args["model_repository"], args["model_version"], params.get("onnx_file", "model.onnx"))
        instances = sum(int(group.get("count", 1)) for group in config.get("instance_group", [])) or 1
        threads = int(params.get("intra_op_threads", "0")) or share_of_cores(instances)
        spinning = params.get("allow_spinning", "1") == "1"
        self.session = create_session(path, threads, spinning=spinning)
        pb_utils.Logger.log_info(f"detector {args['model_instance_name']}: {threads} ONNX Runtime thread(s) "
                                 f"({instances} instance(s) on {share_of_cores(1)} core(s)), spinning {spinning}")
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o["name"] for o in config["output"]]

    def _run_batch(self, requests):
        parts = [pb_utils.get_input_tensor_by_name(r, "images").as_numpy() for r in requests]
        outputs = self.session.run(self.output_names, {self.input_name: np.concatenate(parts)})
        responses, start = [], 0
        for part in parts:
            stop = start + len(part)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(name, np.ascontiguousarray(value[start:stop]))
                for name, value in zip(self.output_names, outputs)
            ]))
            start = stop
        return responses

    def execute(self, requests):
        return run_isolated(requests, self._run_batch, error_response)
