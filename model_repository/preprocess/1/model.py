"""Triton Python model `preprocess`: encoded image bytes -> letterboxed CHW tensor + letterbox params.

JPEG frames are decoded at the smallest DCT scale (1/2, 1/4, 1/8) that (nearly) covers the
model's input (`reduced_decode`), so a 1080p camera frame costs a fraction of a full decode; the letterbox
parameters map boxes back to the original pixels. The images of all requests in one `execute()`
call are decoded by a pool of `decode_threads` threads (OpenCV releases the GIL while decoding).

Each request is prepared on its own: an image that is corrupt, over the configured limits
(checked from its header before decoding) or fails to letterbox fails only its own request,
with INVALID_ARG (HTTP 400 / gRPC INVALID_ARGUMENT) and a message naming the reason; the other
requests of the same `execute()` call succeed and the server stays up.
"""

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(__file__))
from yolo_ops import (ImageDecodeError, ImageLimits, instance_count, model_parameters,  # noqa: E402  (copied in
                     prepare_image, share_of_cores)  # by the repository builder)

PARAMETERS = ("image_height", "image_width", "pixel_type", "decode_threads", "reduced_decode", "max_image_pixels",
              "max_image_bytes", "min_image_side")


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = model_parameters(config, PARAMETERS)
        self.size = (int(params["image_height"]), int(params["image_width"]))
        self.limits = ImageLimits.from_parameters(params)
        self.pixel_type = params["pixel_type"]  # uint8 when the detector scales pixels itself
        self.reduced = params["reduced_decode"].lower() == "true"
        threads = int(params["decode_threads"]) or share_of_cores(instance_count(config))
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode") if threads > 1 else None
        if self.pool:
            import cv2

            cv2.setNumThreads(1)  # the pool is the parallelism: OpenCV's own resize threads would oversubscribe
        self._warm_up()

    def _warm_up(self):
        """Decode and letterbox one synthetic camera frame, so the first real request is not a cold start
        (Triton's model_warmup cannot carry BYTES inputs reliably in 2.51)."""
        import cv2

        frame = np.full((480, 640, 3), 114, dtype=np.uint8)
        cv2.rectangle(frame, (160, 120), (320, 240), (40, 160, 220), -1)
        self._prepare_image((0, 1, cv2.imencode(".jpg", frame)[1].tobytes()))

    def _prepare_image(self, item):
        index, count, data = item  # counted from 1 in messages, as people count
        try:
            return prepare_image(data, self.size, self.pixel_type, self.limits, self.reduced)
        except ImageDecodeError as error:
            return ImageDecodeError(f"image {index + 1} of {count} in the request: {error}")
        except Exception as error:  # OpenCV or NumPy on an input nobody foresaw: still this request's fault
            return ImageDecodeError(f"image {index + 1} of {count} in the request could not be prepared "
                                    f"({type(error).__name__}: {error})")

    def execute(self, requests):
        items = []  # (request, index in request, images in it, bytes) for every image of every request
        for number, request in enumerate(requests):
            encoded = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy().reshape(-1)
            items.extend((number, index, len(encoded), bytes(item)) for index, item in enumerate(encoded))
        work = [(index, count, data) for _, index, count, data in items]
        results = list(self.pool.map(self._prepare_image, work)) if self.pool and len(work) > 1 else \
            [self._prepare_image(item) for item in work]
        by_request = [[] for _ in requests]
        for (number, _, _, _), result in zip(items, results):
            by_request[number].append(result)
        return [self._response(prepared) for prepared in by_request]

    @staticmethod
    def _response(prepared):
        if not prepared:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(
                "the request holds no images", pb_utils.TritonError.INVALID_ARG))
        error = next((result for result in prepared if isinstance(result, ImageDecodeError)), None)
        if error is not None:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error), pb_utils.TritonError.INVALID_ARG))
        tensors, params = zip(*prepared)
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("PIXELS", np.stack(tensors)),
            pb_utils.Tensor("LETTERBOX", np.stack(params)),
        ])

    def finalize(self):
        if self.pool:
            self.pool.shutdown(wait=False)
