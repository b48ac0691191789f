"""Detection in-process: the served ensemble's pre/post-processing around an ONNX Runtime session
(or an OpenVINO one: compress/runtimes.py).

The reference the served model is compared with (`make verify`), the evaluator's detector, the
peer bench's and the client's `--local` mode: no server involved.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compress.detection import SERVED_CONF, SERVED_IOU, SERVED_MAX_DET, Detections, head_detections, letterbox, prepare_image
from compress.errors import BadImageError


class LocalDetector:
    """The same pre/post-processing in-process around a session of `runtime` (no server)."""

    def __init__(self, onnx_path: Path, conf_threshold: float = SERVED_CONF, iou_threshold: float = SERVED_IOU,
                 max_det: int = SERVED_MAX_DET, threads: int = 0, reduced_decode: bool = True,
                 runtime: str = "onnxruntime", precision: str = "f32", session=None):
        """`session`: one already made for `onnx_path` (compress.runtimes), else one is made here."""
        from compress.export import read_info
        from compress.runtimes import create_runtime_session

        self.info = read_info(onnx_path)
        self.session = session or create_runtime_session(onnx_path, runtime, threads, precision)
        # a decoded head has one output, whatever the exporter named it (OpenVINO IRs name it after an op)
        self.output_names = (["output0"] if self.info.head_layout == "decoded"
                             else [o.name for o in self.session.get_outputs()])
        self.conf, self.iou, self.max_det = conf_threshold, iou_threshold, max_det
        self.reduced = reduced_decode

    def detect_images(self, images: list[np.ndarray]) -> list[Detections]:
        return self._detect([letterbox(image, self.info.image_size, self.info.pixel_type) for image in images])

    def detect(self, payloads: list[bytes]) -> list[Detections]:
        """Encoded frames, prepared as the served preprocess prepares them (reduced JPEG decode
        unless `reduced_decode=False`)."""
        return self.detect_prepared(*self.prepare(payloads))

    def _detect(self, prepared: list[tuple[np.ndarray, np.ndarray]]) -> list[Detections]:
        tensors, params = zip(*prepared)
        return self.detect_prepared(np.stack(tensors), np.stack(params))

    def prepare(self, payloads: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """Encoded frames as the served preprocess hands them on: ([B, 3, H, W] pixels, [B, 5] letterbox)."""
        try:
            tensors, params = zip(*[prepare_image(p, self.info.image_size, self.info.pixel_type, reduced=self.reduced)
                                    for p in payloads])
        except ValueError as error:
            raise BadImageError(str(error)) from None
        return np.stack(tensors), np.stack(params)

    def heads(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """The detector's head outputs by name for a letterboxed batch."""
        return dict(zip(self.output_names, self.session.run(None, {"images": images})))

    def detect_prepared(self, images: np.ndarray, letterbox_params: np.ndarray) -> list[Detections]:
        """A batch already letterboxed ([B, 3, H, W], [B, 5]): the detector and the served postprocess."""
        return head_detections(self.heads(images), letterbox_params, self.info.image_size, self.info.strides, self.conf,
                               self.iou, self.max_det)
