"""Triton Python model `detector` for the `local` target: ONNX Runtime or OpenVINO inside the Python backend.

The local server (from the nvidia-pytriton wheel) has no onnxruntime or openvino backend, so this
runs the served file itself: the same model.onnx the NGC `onnxruntime_onnx` target serves, or with
`runtime` openvino the gated NNCF twin (model.xml, `make openvino`) on OpenVINO's CPU plugin, in
the session the gate measured (openvino_session.py). All requests of one `execute()` call run as
one batch, so Triton's dynamic batching pays off; if that batch fails, each request runs alone so
that one bad request fails only itself.
"""

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(__file__))
from yolo_ops import instance_count, model_parameters, run_isolated, share_of_cores  # noqa: E402  (copied in by the repository builder)

PARAMETERS = ("model_file", "runtime", "openvino_precision", "intra_op_threads", "allow_spinning", "providers")


def error_response(error):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"detector: {error}", pb_utils.TritonError.INTERNAL))


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = model_parameters(config, PARAMETERS)
        path = os.path.join(args["model_repository"], args["model_version"], params["model_file"])
        instances = instance_count(config)
        threads = int(params["intra_op_threads"]) or share_of_cores(instances)
        if params["runtime"] == "openvino":
            from openvino_session import create_openvino_session  # noqa: E402  (copied in by the repository builder)

            self.session = create_openvino_session(path, threads, params["openvino_precision"])
            # every batch size the batcher may form, compiled now rather than on its first request
            self.session.compile_batches(range(1, int(config.get("max_batch_size", 0) or 1) + 1))
            facts = self.session.describe()
            pb_utils.Logger.log_info(f"detector {args['model_instance_name']}: OpenVINO CPU, {facts.get('threads')} "
                                     f"thread(s) ({instances} instance(s) on {share_of_cores(1)} core(s)), float layers "
                                     f"{facts.get('inference_precision')}")
        else:
            from onnx_session import create_session, execution_providers  # noqa: E402  (copied in by the repository builder)

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
        self.input_name = self.session.get_inputs()[0].name if hasattr(self.session, "get_inputs") else "images"
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
