"""The served ensemble against the in-process pipeline, over HTTP and gRPC, on real photos."""

from __future__ import annotations

import os

import numpy as np
import pytest

from compress.detection import box_iou
from compress.local_detector import LocalDetector
from tests.conftest import TEST_CONF
from tools.client import TritonDetectorClient

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


@pytest.fixture(scope="module")
def hd_frames(tmp_path_factory) -> list[bytes]:
    """Labelled 1080p camera frames from the dataset generator (the ones `FRAMES=1080p` sends)."""
    from compress.dataset import FRAME_SIZES, DatasetSpec, generate
    from tools.client import collect_images

    folder = tmp_path_factory.mktemp("frames_1080p")
    generate(folder, DatasetSpec(train_images=0, val_images=6, seed=1, frame=FRAME_SIZES["1080p"], jpeg_quality=85))
    return [p.read_bytes() for p in collect_images([folder / "images" / "val"])]


def test_hd_frames_are_served_as_the_reduced_decode_in_process(triton, tiny_onnx, hd_frames):
    """1080p JPEG frames: the served ensemble decodes them at reduced scale and equals the in-process
    reduced path box for box; against the full decode (every pixel) the boxes stay in place."""
    with TritonDetectorClient(triton.grpc_url, "grpc") as client:
        served = [det for start in range(0, len(hd_frames), 2) for det in client.detect(hd_frames[start:start + 2])]
    reduced = LocalDetector(tiny_onnx, conf_threshold=TEST_CONF).detect(hd_frames)
    full = LocalDetector(tiny_onnx, conf_threshold=TEST_CONF, reduced_decode=False).detect(hd_frames)
    assert len(served) == len(reduced) == len(hd_frames)
    assert sum(len(d) for d in reduced) > 0, "the tiny model found nothing at 1080p: the comparison would be empty"
    for s, r in zip(served, reduced):
        assert_same_detections(s, r)
        assert s.boxes[:, [0, 2]].max(initial=0) <= 1920 and s.boxes[:, [1, 3]].max(initial=0) <= 1080
    # in the frames' pixels, not the 128 px model input's
    assert max(s.boxes[:, 2].max(initial=0) for s in served) > 256
    # every box the reduced path returns (the tiny model is not confident at 1080p) has a twin in
    # the full decode's: the two decodes see the same scene at the model's scale
    total = sum(len(r) for r in reduced)
    hits = sum(_matched(r, f, lambda b: b, min_iou=0.7) for r, f in zip(reduced, full))
    assert total and hits >= 0.7 * total, (hits, total)


def _encode(image) -> bytes:
    import cv2

    return cv2.imencode(".png", image)[1].tobytes()


def _matched(reference, candidate, transform, min_iou: float) -> int:
    """How many of `reference`'s boxes, moved by `transform`, reappear in `candidate` (same class)."""
    if not len(reference) or not len(candidate):
        return 0
    moved = transform(reference.boxes)
    iou = box_iou(moved, candidate.boxes) * (reference.classes[:, None] == candidate.classes[None, :])
    return int((iou.max(axis=1) >= min_iou).sum())


def test_boxes_are_in_original_pixels(triton, val_images):
    """The same scene served at another scale and as a non-square crop: the boxes follow the
    pixels of each image as sent (a missed scale-back or pad offset would not)."""
    import cv2

    with TritonDetectorClient(triton.grpc_url, "grpc") as client:
        originals = [det for start in range(0, len(val_images), 8)  # the served max batch is 8
                     for det in client.detect([p.read_bytes() for p in val_images[start:start + 8]])]
        # pick images whose confident boxes lie inside the middle band (rows 32..96 of 128)
        chosen = [(path, det[det.scores >= 0.2]) for path, det in zip(val_images, originals)]
        chosen = [(path, det) for path, det in chosen if len(det)][:6]
        assert chosen, "the tiny model made no confident detection: nothing to compare"
        images = [cv2.imread(str(path)) for path, _ in chosen]
        upscaled = client.detect([_encode(cv2.resize(img, None, fx=3, fy=3, interpolation=cv2.INTER_LINEAR))
                                  for img in images])
        # a 128x64 crop letterboxes back to the same place (pad 32 top and bottom), so the model
        # sees the same pixels in the band; boxes must come back in the crop's own coordinates
        band = client.detect([_encode(img[32:96]) for img in images])
    scaled_hits = band_hits = band_total = 0
    for (path, det), up, crop in zip(chosen, upscaled, band):
        assert up.boxes[:, [0, 2]].max(initial=0) <= 384 and crop.boxes[:, [1, 3]].max(initial=0) <= 64
        scaled_hits += _matched(det, up, lambda b: b * 3, min_iou=0.8)
        inside = det[(det.boxes[:, 1] >= 32) & (det.boxes[:, 3] <= 96)]
        band_total += len(inside)
        band_hits += _matched(inside, crop, lambda b: b - np.array([0, 32, 0, 32], np.float32), min_iou=0.8)
    total = sum(len(det) for _, det in chosen)
    assert scaled_hits >= 0.8 * total, f"{scaled_hits} of {total} boxes found again x3 in the upscaled images"
    assert band_total and band_hits >= 0.8 * band_total, f"{band_hits} of {band_total} boxes found in the crops"


def detector_log_lines(log: str) -> list[tuple[str, int, int, str]]:
    import re

    return [(name, int(threads), int(instances), spinning) for name, threads, instances, spinning in re.findall(
        r"detector (detector_\d+_\d+): (\d+) ONNX Runtime thread\(s\) \((\d+) instance\(s\).*spinning (\w+)", log)]


def test_detector_instances_share_the_cores(triton):
    """Both detector instances of the shipped count run with spinning off (idle threads that spin
    take the cores the Python steps need), each with its share of the cores."""
    lines = detector_log_lines(triton.log_path.read_text(errors="replace"))
    assert len({name for name, *_ in lines}) == 2, lines
    assert all(n == 2 and spin == "False" for _, _, n, spin in lines), lines
    assert len({t for _, t, _, _ in lines}) == 1  # the same share for each


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs two CPUs this process may pin a server to")
def test_detector_threads_follow_the_cores_the_server_may_use(tiny_onnx, tmp_path):
    """A server pinned to one CPU, then to two: one detector instance runs ONNX Runtime with as
    many threads as the CPUs it was given, two instances on two CPUs one thread each (the count is
    read where the server runs and shared by the instances, not assumed)."""
    from compress.export import read_info
    from tests.conftest import copy_committed_repository
    from tools import build_repo
    from tools.server import TritonServer

    repos = {}
    for instances in (1, 2):
        repos[instances] = copy_committed_repository(tmp_path / f"repo_{instances}")
        build_repo.build(repos[instances], tiny_onnx,
                         build_repo.settings_for(read_info(tiny_onnx), detector_instances=instances), {"stage": "export"})
    cpus = sorted(os.sched_getaffinity(0))[:2]
    mine = os.sched_getaffinity(0)
    for given, instances, expected in ((cpus[:1], 1, 1), (cpus, 1, 2), (cpus, 2, 1)):
        repo = repos[instances]
        log = tmp_path / f"server_{len(given)}_{instances}.log"
        os.sched_setaffinity(0, given)  # the server and its stubs inherit it
        try:
            server = TritonServer(repo, log_path=log).start()
        finally:
            os.sched_setaffinity(0, mine)
        server.stop()
        lines = detector_log_lines(log.read_text(errors="replace"))
        assert len(lines) == instances and all(threads == expected and n == instances for _, threads, n, _ in lines), \
            (given, lines)
