"""Triton Python model `preprocess`: encoded image bytes -> letterboxed CHW tensor + letterbox params.

All requests of one `execute()` call are decoded and letterboxed together; an undecodable
image fails only its own request, with INVALID_ARG (HTTP 400), and the server stays up.
"""

import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(__file__))
from yolo_ops import ImageDecodeError, decode_image, letterbox  # noqa: E402  (copied in by the repository builder)


class TritonPythonModel:
    def initialize(self, args):
        import json

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.size = (int(params["image_height"]), int(params["image_width"]))

    def _prepare(self, request):
        encoded = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy().reshape(-1)
        if encoded.size == 0:
            raise ImageDecodeError("the request holds no images")
        tensors, params = [], []
        for index, item in enumerate(encoded):
            try:
                tensor, lb = letterbox(decode_image(bytes(item)), self.size)
            except ImageDecodeError as error:
                raise ImageDecodeError(f"image {index} of the batch: {error}") from None
            tensors.append(tensor)
            params.append(lb)
        return np.stack(tensors), np.stack(params)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                pixels, params = self._prepare(request)
            except ImageDecodeError as error:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(error), pb_utils.TritonError.INVALID_ARG)))
                continue
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("PIXELS", pixels),
                pb_utils.Tensor("LETTERBOX", params),
            ]))
        return responses
