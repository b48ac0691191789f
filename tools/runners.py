"""One runner shape for PyTorch, ONNX Runtime, OpenVINO and TensorRT: Polygraphy's BaseRunner.

Every runner takes {"images": float32 [B, 3, H, W]} and returns the raw head outputs
{"box_logits", "class_logits"}, so Polygraphy's Comparator and the parity gate treat them
alike. torch, openvino and tensorrt are imported only inside (Polygraphy has no OpenVINO runner of
its own: OpenVinoRunner is this project's, on the session the served detector runs). The served ensemble is compared at the
task level instead (`tools.parity --deployed`), through the real client.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata

from compress.errors import MissingDependencyError, UnsupportedModelError

HEAD_OUTPUTS = ("box_logits", "class_logits")


def _image_metadata(image_size: tuple[int, int]) -> TensorMetadata:
    return TensorMetadata().add("images", dtype=np.float32, shape=(-1, 3, *image_size))


class TorchRunner(BaseRunner):
    """An Ultralytics checkpoint with its head cut like the ONNX export, on `device` (a torch
    device; default the training device: the GPU when torch sees one)."""

    def __init__(self, weights: Path, image_size: tuple[int, int], device: str | None = None, name: str | None = None):
        super().__init__(name=name, prefix="torch-runner")
        self.weights, self.image_size = Path(weights), image_size
        if device is None:
            from compress.env import training_device

            device = training_device()
        self.device = device if device == "cpu" or device.startswith("cuda") else f"cuda:{device.split(',')[0]}"
        self.model = None

    def activate_impl(self):
        from compress.export import raw_head_module

        self.model = raw_head_module(self.weights).to(self.device)

    def get_input_metadata_impl(self):
        return _image_metadata(self.image_size)

    def infer_impl(self, feed_dict):
        import torch

        with torch.no_grad():
            start = time.perf_counter()
            outputs = self.model(torch.from_numpy(np.ascontiguousarray(feed_dict["images"])).to(self.device))
            self.inference_time = time.perf_counter() - start
        return OrderedDict((name, out.float().cpu().numpy()) for name, out in zip(HEAD_OUTPUTS, outputs))

    def deactivate_impl(self):
        self.model = None


class OpenVinoRunner(BaseRunner):
    """An OpenVINO IR (or ONNX) on OpenVINO's CPU plugin at float `precision`
    (compress.openvino_session), answering with the ONNX export's output names."""

    def __init__(self, path: Path, image_size: tuple[int, int], precision: str = "f32", name: str | None = None):
        super().__init__(name=name, prefix="openvino-runner")
        self.path, self.image_size, self.precision = Path(path), image_size, precision
        self.session = None

    def activate_impl(self):
        from compress.openvino_session import create_openvino_session

        self.session = create_openvino_session(self.path, precision=self.precision)

    def get_input_metadata_impl(self):
        return _image_metadata(self.image_size)

    def infer_impl(self, feed_dict):
        start = time.perf_counter()
        compiled = self.session.compiled(tuple(feed_dict["images"].shape))
        results = compiled(np.ascontiguousarray(feed_dict["images"]))
        self.inference_time = time.perf_counter() - start
        by_name = {name: value for port, value in results.items() for name in port.get_names()}
        missing = [name for name in HEAD_OUTPUTS if name not in by_name]
        if missing:
            raise UnsupportedModelError(f"{self.path} has no output(s) {', '.join(missing)}: not a raw-head export")
        return OrderedDict((name, np.asarray(by_name[name], dtype=np.float32)) for name in HEAD_OUTPUTS)

    def deactivate_impl(self):
        self.session = None


def onnx_runner(path: Path, name: str):
    """ONNX Runtime on the providers every session of the toolkit uses (compress.onnx_session)."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    from compress.onnx_session import execution_providers

    return OnnxrtRunner(SessionFromOnnx(str(path), providers=execution_providers()), name=name)


def tensorrt_runner(plan: Path, name: str):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        from compress.plan import NO_TENSORRT

        raise MissingDependencyError(NO_TENSORRT) from None
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    return TrtRunner(EngineFromBytes(Path(plan).read_bytes()), name=name)
