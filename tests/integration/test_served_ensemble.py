"""The served ensemble against the in-process pipeline, over HTTP and gRPC, on real photos."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import TEST_CONF
from tools.client import LocalDetector, TritonDetectorClient
from tools.detection import box_iou

pytestmark = pytest.mark.integration


def assert_same_detections(served, local):
    """Every in-process box has a served twin: IoU >= 0.99, same class, score within 1e-3."""
    assert len(served) == len(local)
    if not len(local):
        return
    iou = box_iou(local.boxes, served.boxes)
    match = iou.argmax(axis=1)
    assert (iou.max(axis=1) >= 0.99).all()
    assert len(set(match.tolist())) == len(match)  # one-to-one
    assert (served.classes[match] == local.classes).all()
    assert np.abs(served.scores[match] - local.scores).max() <= 1e-3


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_equals_in_process(triton, tiny_onnx, photos, val_images, protocol):
    images = photos + val_images[:6]
    payloads = [p.read_bytes() for p in images]
    url = triton.http_url if protocol == "http" else triton.grpc_url
    with TritonDetectorClient(url, protocol) as client:
        served = client.detect(payloads)
    local = LocalDetector(tiny_onnx, conf_threshold=TEST_CONF).detect(payloads)
    assert len(served) == len(images)
    assert sum(len(d) for d in local) > 0, "the tiny model found nothing: the comparison would be empty"
    for s, l in zip(served, local):
        assert_same_detections(s, l)


def test_boxes_are_in_original_pixels(triton, photos, val_images):
    """Boxes land inside each original image (not the 128x128 letterbox) and cover real objects."""
    import cv2

    images = photos + val_images[:6]
    with TritonDetectorClient(triton.http_url) as client:
        detections = client.detect([p.read_bytes() for p in images])
    assert sum(len(d) for d in detections) > 0
    for path, dets in zip(images, detections):
        height, width = cv2.imread(str(path)).shape[:2]
        if len(dets):
            assert dets.boxes[:, [0, 2]].max() <= width and dets.boxes[:, [1, 3]].max() <= height
            assert (dets.boxes[:, 2:] >= dets.boxes[:, :2]).all()
    # bus.jpg is 810x1080: a box mapped back from the letterbox must reach beyond 128 px somewhere
    big = [d for p, d in zip(images, detections) if p.name == "bus.jpg" and len(d)]
    if big:
        assert big[0].boxes.max() > 128
