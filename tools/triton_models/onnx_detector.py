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
from onnx_session import create_session, execution_providers  # noqa: E402  (both copied in by the repository builder)
from yolo_ops import instance_count, model_parameters, run_isolated, share_of_cores  # noqa: E402

PARAMETERS = ("onnx_file", "intra_op_threads", "allow_spinning", "providers")


def error_response(error):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"detector: {error}", pb_utils.TritonError.INTERNAL))


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = model_parameters(config, PARAMETERS)
        path = os.path.join(args["model_repository"], args["model_version"], params["onnx_file"])
        instances = instance_count(config)
        threads = int(params["intra_op_threads"]) or share_of_cores(instances)
        spinning = params["allow_spinning"] == "1"
        providers = execution_providers(params["providers"])
        if args.get("model_instance_kind") == "GPU" and "CUDAExecutionProvider" in providers:
            # the instance's own GPU, as Triton placed it
            device = int(args.get("model_instance_device_id", 0))
            providers = [("CUDAExecutionProvider", {"device_id": device}) if p == "CUDAExecutionProvider" else p
                         for p in providers]
        self.session = create_session(path, threads, spinning=spinning, providers=providers)
        pb_utils.Logger.log_info(f"detector {args['model_instance_name']}: {threads} ONNX Runtime thread(s) "
                                 f"({instances} instance(s) on {share_of_cores(1)} core(s)), spinning {spinning}, "
                                 f"providers {self.session.get_providers()}")
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
