"""`python -m tools.client` as the README types it: both protocols, a folder, --concurrency > 1,
--annotate, a bad file among good ones. Run as a process with several worker threads, because an
HTTP client shared across threads crashes every CLI call while one thread calling the class works."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from compress.detection import Detections
from compress.local_detector import LocalDetector
from tests.conftest import ROOT, TEST_CONF
from tests.integration.test_served_ensemble import assert_same_detections

pytestmark = pytest.mark.integration


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.client", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=180, env={**os.environ, "PYTHONPATH": str(ROOT)})


def as_detections(entry: dict) -> Detections:
    import numpy as np

    dets = entry["detections"]
    return Detections(np.array([d["box_xyxy"] for d in dets], dtype=np.float32).reshape(-1, 4),
                      np.array([d["score"] for d in dets], dtype=np.float32),
                      np.array([d["class_id"] for d in dets], dtype=np.int32))


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory, val_images, photos):
    folder = tmp_path_factory.mktemp("frames")
    for path in val_images[:8] + photos:
        shutil.copy(path, folder / path.name)
    return folder


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_cli_folder_with_concurrency_and_annotations(triton, tiny_onnx, image_folder, tmp_path, protocol):
    url = triton.http_url if protocol == "http" else triton.grpc_url
    done = run_cli(str(image_folder), "--protocol", protocol, "--url", url, "--concurrency", "4", "--batch", "2",
                   "--annotate", str(tmp_path / "annotated"))
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    images = sorted(image_folder.iterdir())
    assert [e["image"] for e in report] == [str(p) for p in images]
    local = LocalDetector(tiny_onnx, conf_threshold=TEST_CONF)
    for entry, path in zip(report, images):
        # the CLI rounds boxes to 0.01 px and scores to 1e-4: well inside the comparison's tolerance
        assert_same_detections(as_detections(entry), local.detect([path.read_bytes()])[0])
    assert sum(len(e["detections"]) for e in report) > 0
    assert sorted(p.name for p in (tmp_path / "annotated").iterdir()) == [p.name for p in images]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_cli_reports_a_bad_file_and_serves_the_rest(triton, image_folder, tmp_path, protocol):
    folder = tmp_path / "mixed"
    shutil.copytree(image_folder, folder)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    url = triton.http_url if protocol == "http" else triton.grpc_url
    # in batches of 3: the bad file's request is refused whole; its two neighbours are served anyway
    done = run_cli(str(folder), "--protocol", protocol, "--url", url, "--concurrency", "3", "--batch", "3")
    assert done.returncode == 2
    report = {os.path.basename(e["image"]): e for e in json.loads(done.stdout)}
    assert len(report) == len(list(folder.iterdir()))
    assert "not a decodable image" in report["broken.jpg"]["error"] and "1 of 1 in the request" in report["broken.jpg"]["error"]
    assert all("detections" in e for name, e in report.items() if name != "broken.jpg")
    assert "error: 1 of" in done.stderr and "Traceback" not in done.stderr


def test_cli_without_a_server_says_so_in_one_line(tmp_path, image_folder):
    done = run_cli(str(image_folder), "--protocol", "http", "--url", "127.0.0.1:9")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().startswith("error: cannot reach Triton") and "make serve" in done.stderr


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_cli_resize_to_model_sends_small_frames_and_answers_in_original_pixels(triton, tmp_path, protocol):
    """1080p frames shrunk on the sending side to the model input: the boxes come back in the
    1920x1080 pixels of the frames as captured, where the full frames' boxes are."""
    from compress.dataset import FRAME_SIZES, DatasetSpec, generate
    from compress.detection import box_iou

    generate(tmp_path, DatasetSpec(train_images=0, val_images=4, seed=2, frame=FRAME_SIZES["1080p"], jpeg_quality=85))
    folder = tmp_path / "images" / "val"
    url = triton.http_url if protocol == "http" else triton.grpc_url
    full = run_cli(str(folder), "--protocol", protocol, "--url", url)
    shrunk = run_cli(str(folder), "--protocol", protocol, "--url", url, "--resize-to-model")
    assert full.returncode == 0 and shrunk.returncode == 0, shrunk.stderr[-2000:]
    hits = total = widest = 0
    for whole, small in zip(json.loads(full.stdout), json.loads(shrunk.stdout)):
        whole, small = as_detections(whole), as_detections(small)
        total += len(whole)
        if len(whole) and len(small):
            iou = box_iou(whole.boxes, small.boxes) * (whole.classes[:, None] == small.classes[None, :])
            hits += int((iou.max(axis=1) >= 0.7).sum())
        assert small.boxes[:, [0, 2]].max(initial=0) <= 1920 and small.boxes[:, [1, 3]].max(initial=0) <= 1080
        widest = max(widest, small.boxes[:, 2].max(initial=0))
    assert total and hits >= 0.7 * total, (hits, total)
    assert widest > 256  # in the captured 1920x1080 pixels, not the shrunk frame's


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_resize_to_model_sends_model_sized_frames(triton, tmp_path, protocol):
    """What goes on the wire with `--resize-to-model`: JPEGs no larger than the model input (its
    longest side the model's), a fraction of the captured frames' bytes."""
    import cv2
    import numpy as np

    from compress.dataset import FRAME_SIZES, DatasetSpec, generate
    from tools.client import TritonDetectorClient

    generate(tmp_path, DatasetSpec(train_images=0, val_images=2, seed=3, frame=FRAME_SIZES["1080p"], jpeg_quality=85))
    frames = [p.read_bytes() for p in sorted((tmp_path / "images" / "val").iterdir())]
    sent = []
    url = triton.http_url if protocol == "http" else triton.grpc_url
    with TritonDetectorClient(url, protocol, resize_to_model=True) as client:
        send = client.infer_raw

        def recording(inputs, *args, **kwargs):  # what the real request carries, then the real request
            sent.extend(bytes(item) for item in inputs["IMAGE"].reshape(-1))
            return send(inputs, *args, **kwargs)

        client.infer_raw = recording
        detections = client.detect(frames)
    assert len(detections) == len(sent) == len(frames)
    for original, payload in zip(frames, sent):
        image = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
        assert max(image.shape[:2]) == 128 and image.shape[1] / image.shape[0] == pytest.approx(1920 / 1080, rel=0.02)
        assert len(payload) < len(original) / 10
