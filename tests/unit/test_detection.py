"""The shared detection maths against Ultralytics' own implementations."""

from __future__ import annotations

import numpy as np
import pytest

from compress.detection import (Detections, ImageDecodeError, box_iou, decode_image, decode_raw_head, head_detections,
                                letterbox, nms, pad_detections, postprocess, postprocess_raw, unpad_detections)


@pytest.mark.parametrize("shape", [(480, 640), (640, 480), (256, 256), (37, 501)])
def test_letterbox_matches_ultralytics(shape):
    from ultralytics.data.augment import LetterBox

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    tensor, params = letterbox(image, (256, 256))
    expected = LetterBox((256, 256), auto=False, stride=32)(image=image)
    np.testing.assert_array_equal((tensor[::-1].transpose(1, 2, 0) * 255).round().astype(np.uint8), expected)
    gain, pad_x, pad_y, width, height = params
    assert (width, height) == (shape[1], shape[0])
    assert gain == pytest.approx(min(256 / shape[0], 256 / shape[1]))


@pytest.mark.parametrize("shape", [(480, 640), (37, 501)])
def test_uint8_letterbox_is_the_float_one_before_scaling(shape):
    """The served ensemble hands the detector bytes; the graph divides by 255 as letterbox did."""
    image = np.random.default_rng(1).integers(0, 256, (*shape, 3), dtype=np.uint8)
    floats, params = letterbox(image, (256, 320))
    pixels, same_params = letterbox(image, (256, 320), pixel_type="uint8")
    assert pixels.dtype == np.uint8 and pixels.flags.c_contiguous
    np.testing.assert_array_equal(pixels.astype(np.float32) / 255.0, floats)
    np.testing.assert_array_equal(params, same_params)
    with pytest.raises(ValueError, match="pixel type"):
        letterbox(image, (256, 320), pixel_type="float16")


@pytest.mark.parametrize("hostile", ["none", "nan_and_inf", "huge_boxes"])
def test_candidate_first_decode_equals_full_decode(hostile):
    """postprocess_raw decodes boxes only where a class passes the threshold: same detections as
    decoding every anchor first, broken values included."""
    rng = np.random.default_rng(7)
    box = rng.normal(0, 3, (3, 64, 1344)).astype(np.float32)
    cls = rng.normal(-3, 2, (3, 4, 1344)).astype(np.float32)
    if hostile == "nan_and_inf":
        box[0, 5, rng.integers(0, 1344, 50)] = np.nan
        cls[1, 2, rng.integers(0, 1344, 30)] = np.inf
        cls[2, :, :100] = np.nan
    elif hostile == "huge_boxes":
        box[2] = 1e30
    params = np.array([[0.8, 10, 20, 320, 240]] * 3, dtype=np.float32)
    with np.errstate(all="ignore"):
        full = postprocess(decode_raw_head(box, cls, (256, 256), (8, 16, 32)), params)
        fast = postprocess_raw(box, cls, params, (256, 256), (8, 16, 32))
        by_name = head_detections({"box_logits": box, "class_logits": cls}, params, (256, 256), (8, 16, 32))
    assert [len(d) for d in full] == [len(d) for d in fast] == [len(d) for d in by_name]
    assert sum(len(d) for d in full) > 100
    for a, b, c in zip(full, fast, by_name):
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_array_equal(a.classes, b.classes)
        # the same DFL sums over a subset of anchors: NumPy may add in another order (last bits)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
        np.testing.assert_array_equal(b.boxes, c.boxes)
    with pytest.raises(ValueError, match="not a valid letterbox"):
        postprocess_raw(box, cls, params * np.array([0, 1, 1, 1, 1], dtype=np.float32), (256, 256), (8, 16, 32))


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolov8n-p6.yaml", "yolov8n-p2.yaml"])
def test_decode_raw_head_matches_ultralytics_detect(cfg):
    """Our DFL decode of the raw head equals the Detect module's own decoded output, for P5 and
    for heads with other levels (P6: strides 8..64, P2: 4..32)."""
    import torch
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel(cfg, nc=3, verbose=False).eval()
    detect = model.model[-1]
    captured = {}
    detect.register_forward_hook(lambda m, i, o: captured.update(features=i[0]))
    with torch.no_grad():
        decoded = model(torch.rand(2, 3, 128, 192))[0].numpy()
        raw = torch.cat([f.flatten(2) for f in [torch.cat([detect.cv2[i](x), detect.cv3[i](x)], 1)
                                               for i, x in enumerate(captured["features"])]], 2).numpy()
    strides = tuple(int(s) for s in detect.stride)
    ours = decode_raw_head(raw[:, :64], raw[:, 64:], (128, 192), strides)
    np.testing.assert_allclose(ours, decoded, rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="anchors"):  # the P5 default on another layout is refused, not misread
        decode_raw_head(raw[:, :64], raw[:, 64:], (128, 192), (8, 16, 32) if len(strides) == 4 else (8, 16))


def test_postprocess_maps_boxes_back_and_is_class_aware():
    # Two overlapping boxes of different classes both survive; a same-class duplicate does not.
    anchors = np.zeros((1, 4 + 2, 3), dtype=np.float32)
    anchors[0, :4, 0] = [100, 100, 40, 40]
    anchors[0, :4, 1] = [102, 100, 40, 40]
    anchors[0, :4, 2] = [101, 100, 40, 40]
    anchors[0, 4, 0], anchors[0, 5, 1], anchors[0, 4, 2] = 0.9, 0.8, 0.7
    params = np.array([[0.5, 10, 20, 400, 300]], dtype=np.float32)
    (det,) = postprocess(anchors, params, conf_threshold=0.25, iou_threshold=0.45)
    assert sorted(det.classes.tolist()) == [0, 1]
    np.testing.assert_allclose(det.boxes[0], [(80 - 10) / 0.5, (80 - 20) / 0.5, (120 - 10) / 0.5, (120 - 20) / 0.5])


def test_nms_keeps_highest_and_distinct():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=np.float32)
    keep = nms(boxes, np.array([0.5, 0.9, 0.4]), 0.5)
    assert keep.tolist() == [1, 2]


@pytest.mark.parametrize("spread", [60, 300, 1000])  # 60: a crowded scene, most candidates overlap
def test_nms_is_torchvisions_batched_nms(spread):
    """The reference Ultralytics uses (torchvision.ops.batched_nms): same boxes kept, same order."""
    import torch
    import torchvision

    rng = np.random.default_rng(spread)
    count = 1344  # every anchor of a 256 px input
    xy, wh = rng.uniform(0, spread, (count, 2)), rng.uniform(5, 80, (count, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    scores, classes = rng.uniform(0, 1, count).astype(np.float32), rng.integers(0, 4, count)
    expected = torchvision.ops.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores),
                                           torch.from_numpy(classes), 0.45).numpy()
    kept = nms(boxes, scores, 0.45, classes)
    assert 0 < len(kept) < count and kept.tolist() == expected.tolist()


def test_pad_unpad_round_trip():
    dets = [Detections(np.ones((n, 4), np.float32) * n, np.full(n, 0.5, np.float32), np.arange(n, dtype=np.int32))
            for n in (0, 3, 1)]
    padded = pad_detections(dets)
    assert padded["BOXES"].shape == (3, 3, 4) and padded["NUM_DETECTIONS"].ravel().tolist() == [0, 3, 1]
    for a, b in zip(unpad_detections(padded), dets):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.classes, b.classes)


def test_decode_image_rejects_garbage():
    with pytest.raises(ImageDecodeError):
        decode_image(b"definitely not a jpeg")
    with pytest.raises(ImageDecodeError):
        decode_image(b"")


def test_box_iou():
    a = np.array([[0, 0, 10, 10]], dtype=np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], dtype=np.float32)
    np.testing.assert_allclose(box_iou(a, b)[0], [1.0, 1 / 3, 0.0], atol=1e-6)
