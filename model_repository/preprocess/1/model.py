"""Triton Python model `preprocess`: encoded image bytes -> letterboxed CHW tensor + letterbox params.

Each request is prepared on its own: an image that is corrupt, over the configured limits
(checked from its header before decoding) or fails to letterbox fails only its own request,
with INVALID_ARG (HTTP 400 / gRPC INVALID_ARGUMENT) and a message naming the reason; the other
requests of the same `execute()` call succeed and the server stays up.
"""

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(__file__))
from yolo_ops import ImageDecodeError, ImageLimits, decode_image, letterbox  # noqa: E402  (copied in by the repository builder)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.size = (int(params["image_height"]), int(params["image_width"]))
        self.limits = ImageLimits.from_parameters(params)
        self.pixel_type = params.get("pixel_type", "float32")  # uint8 when the detector scales pixels itself
        self._warm_up()

    def _warm_up(self):
        """Decode and letterbox one synthetic camera frame, so the first real request is not a cold start
        (Triton's model_warmup cannot carry BYTES inputs reliably in 2.51)."""
        import cv2

        frame = np.full((480, 640, 3), 114, dtype=np.uint8)
        cv2.rectangle(frame, (160, 120), (320, 240), (40, 160, 220), -1)
        letterbox(decode_image(cv2.imencode(".jpg", frame)[1].tobytes(), self.limits), self.size, self.pixel_type)

    def _prepare_image(self, index, data):
        try:
            return letterbox(decode_image(data, self.limits), self.size, self.pixel_type)
        except ImageDecodeError as error:
            raise ImageDecodeError(f"image {index} of the request: {error}") from None
        except Exception as error:  # OpenCV or NumPy on an input nobody foresaw: still this request's fault
            raise ImageDecodeError(f"image {index} of the request could not be prepared "
                                   f"({type(error).__name__}: {error})") from None

    def _prepare(self, request):
        encoded = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy().reshape(-1)
        if encoded.size == 0:
            raise ImageDecodeError("the request holds no images")
        prepared = [self._prepare_image(index, bytes(item)) for index, item in enumerate(encoded)]
        tensors, params = zip(*prepared)
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
