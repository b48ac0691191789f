"""A head with other levels than the P5 default (P6: strides 8, 16, 32, 64): the repository is
configured from the exported model's own metadata and serves it as the in-process pipeline runs it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import copy_committed_repository

pytestmark = pytest.mark.integration
P6_STRIDES = (8, 16, 32, 64)
CONF = 0.005  # an untrained head's scores are small; this keeps detections from every level


@pytest.fixture(scope="module")
def p6_onnx(tmp_path_factory):
    import torch
    from ultralytics.nn.tasks import DetectionModel

    from compress.export import export_raw_onnx
    from compress.prune import save_checkpoint

    out = tmp_path_factory.mktemp("p6")
    torch.manual_seed(0)
    model = DetectionModel("yolov8n-p6.yaml", nc=2, verbose=False)
    model.names = {0: "car", 1: "person"}
    weights = save_checkpoint(model, out / "p6.pt", {"imgsz": 128, "task": "detect"})
    return export_raw_onnx(weights, out / "p6.onnx", 128, {"toolkit_stage": "user"})


def test_strides_and_bins_come_from_the_model(p6_onnx, tmp_path):
    import onnx

    from compress.errors import UnsupportedModelError
    from compress.export import read_info

    info = read_info(p6_onnx)
    assert (info.strides, info.reg_max) == (P6_STRIDES, 16)
    # An Ultralytics-style export records only the largest stride: the levels follow from the
    # output's anchor count (P6 at 128 px: 16^2 + 8^2 + 4^2 + 2^2 = 340).
    model = onnx.load(str(p6_onnx))
    kept = [p for p in model.metadata_props if p.key != "strides"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(tmp_path / "ultralytics_style.onnx"))
    assert read_info(tmp_path / "ultralytics_style.onnx").strides == P6_STRIDES
    # Metadata that contradicts the graph is refused with one message, not served wrong.
    for prop in model.metadata_props:
        if prop.key == "stride":
            prop.value = "16"
    onnx.save(model, str(tmp_path / "contradicting.onnx"))
    with pytest.raises(UnsupportedModelError, match="340 anchors"):
        read_info(tmp_path / "contradicting.onnx")


@pytest.mark.parametrize("pixel_type", ["uint8", "float32"])
def test_p6_head_is_served_like_in_process(p6_onnx, tmp_path, photos, pixel_type):
    """Served with uint8 pixels (the default: Cast + Div prepended) or float32 ones, the ensemble
    detects what the exported float model does in-process."""
    from compress.local_detector import LocalDetector
    from tools import triton_config as tc
    from tools.client import TritonDetectorClient
    from tools.server import TritonServer

    repo = copy_committed_repository(tmp_path / "repo")
    build = subprocess.run([sys.executable, "-m", "tools.build_repo", "--onnx", str(p6_onnx), "--repo", str(repo),
                            "--conf-threshold", str(CONF), "--pixel-type", pixel_type], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    detector = tc.read_config(repo / tc.DETECTOR / "config.pbtxt")
    assert detector.input[0].data_type == (tc.mc.TYPE_UINT8 if pixel_type == "uint8" else tc.mc.TYPE_FP32)
    assert [list(o.dims) for o in detector.output] == [[64, 340], [2, 340]]
    postprocess = tc.read_config(repo / tc.POSTPROCESS / "config.pbtxt")
    assert postprocess.parameters["strides"].string_value == "8,16,32,64"

    payloads = [p.read_bytes() for p in photos]
    with TritonServer(repo, log_path=tmp_path / "server.log") as server:
        with TritonDetectorClient(server.grpc_url, "grpc") as client:
            served = client.detect(payloads)
    local = LocalDetector(p6_onnx, conf_threshold=CONF).detect(payloads)
    assert sum(len(d) for d in local) > 0, "nothing above the threshold: the comparison would be empty"
    for s, l in zip(served, local):
        # an untrained head puts boxes of several classes on one spot: compare as sorted sets
        assert len(s) == len(l)
        by_class_s, by_class_l = np.lexsort((s.scores, s.classes)), np.lexsort((l.scores, l.classes))
        np.testing.assert_array_equal(s.classes[by_class_s], l.classes[by_class_l])
        np.testing.assert_allclose(s.scores[by_class_s], l.scores[by_class_l], atol=1e-3)
        np.testing.assert_allclose(s.boxes[by_class_s], l.boxes[by_class_l], atol=0.5)


def test_a_model_taking_uint8_pixels_is_served_as_it_is(p6_onnx, tmp_path):
    """`--onnx` of a file that already scales pixels itself: copied unchanged by default, and
    refused with one line (nothing half-written) when asked to feed it float32 pixels."""
    from compress.export import with_uint8_pixels
    from compress.manifest import file_hash

    wrapped = with_uint8_pixels(p6_onnx, tmp_path / "uint8.onnx")
    repo = copy_committed_repository(tmp_path / "repo")
    command = [sys.executable, "-m", "tools.build_repo", "--onnx", str(wrapped), "--repo", str(repo)]
    refused = subprocess.run(command + ["--pixel-type", "float32"], capture_output=True, text=True)
    assert refused.returncode == 2 and "takes uint8 pixels" in refused.stderr and "Traceback" not in refused.stderr
    assert not (repo / "detector").exists()
    built = subprocess.run(command, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    assert file_hash(repo / "detector" / "1" / "model.onnx") == file_hash(wrapped)
