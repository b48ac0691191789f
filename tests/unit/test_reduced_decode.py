"""Decoding no more pixels than the model keeps: JPEG frames decoded at 1/2, 1/4 or 1/8 scale in
the DCT domain, letterboxed from there, boxes mapped back to the original pixels."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from compress.detection import (ImageLimits, decode_for_model, decode_scale, image_header, postprocess,
                                prepare_image)

MODEL = (256, 256)
MARKER = (40, 200, 250)  # BGR: a colour the background never has


def _frame(width: int, height: int, box: tuple[int, int, int, int]) -> np.ndarray:
    rng = np.random.default_rng(0)
    frame = np.clip(rng.normal(100, 12, (height, width, 3)), 0, 255).astype(np.uint8)
    cv2.rectangle(frame, box[:2], box[2:], MARKER, -1)
    return frame


def _jpeg(image: np.ndarray, exif_orientation: int | None = None) -> bytes:
    if exif_orientation is None:
        return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    pil = Image.fromarray(image[:, :, ::-1])
    exif = pil.getexif()
    exif[0x0112] = exif_orientation
    buffer = io.BytesIO()
    pil.save(buffer, "JPEG", quality=90, exif=exif.tobytes())
    return buffer.getvalue()


def _marker_box_in_original(tensor: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Find the marker rectangle in the model input and map it back with the letterbox params."""
    rgb = tensor.transpose(1, 2, 0) * 255
    mask = np.abs(rgb - np.array(MARKER[::-1])).sum(axis=2) < 60
    ys, xs = np.nonzero(mask)
    box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)
    gain, pad_x, pad_y = params[:3]
    return (box - [pad_x, pad_y, pad_x, pad_y]) / gain


@pytest.mark.parametrize(("width", "height", "kind", "expected"), [
    # 1080p: 1/8 is 240x135 where the letterbox keeps 256x144 (enlarged 1.067x, within 1.1); 720p at 1/8
    # would be enlarged 1.6x: 1/4; 1600x900 at 1/8 would be enlarged 1.28x: 1/4
    (1920, 1080, "JPEG", 8), (1280, 720, "JPEG", 4), (1600, 900, "JPEG", 4), (3840, 2160, "JPEG", 8),
    (640, 480, "JPEG", 2), (320, 320, "JPEG", 1), (200, 100, "JPEG", 1), (1920, 1080, "PNG", 1)])
def test_the_largest_reduction_that_nearly_covers_the_model_input(width, height, kind, expected):
    assert decode_scale(width, height, kind, MODEL) == expected


@pytest.mark.parametrize(("width", "height"), [(1920, 1080), (1280, 720), (1917, 1079), (640, 480)])
def test_boxes_map_back_to_original_pixels_like_the_full_decode(width, height):
    drawn = (int(width * 0.3), int(height * 0.4), int(width * 0.55), int(height * 0.8))
    data = _jpeg(_frame(width, height, drawn))
    reduced, reduced_params = prepare_image(data, MODEL)
    full, full_params = prepare_image(data, MODEL, reduced=False)
    assert decode_for_model(data, MODEL)[1] > 1  # the reduced path was taken
    assert reduced_params[3:].tolist() == full_params[3:].tolist() == [width, height]
    # the gain maps original pixels, as the full decode's does (a libjpeg partial block moves it <0.5%)
    np.testing.assert_allclose(reduced_params[0], full_params[0], rtol=5e-3)
    np.testing.assert_allclose(reduced_params[1:3], full_params[1:3], atol=0.51)
    one_model_pixel = 1 / full_params[0]  # original pixels per model pixel
    for tensor, params in ((reduced, reduced_params), (full, full_params)):
        np.testing.assert_allclose(_marker_box_in_original(tensor, params), drawn, atol=1.5 * one_model_pixel)
    # the pixels themselves: the reduced path averages (area-like), the full one samples; close, not equal
    assert np.abs(reduced - full).mean() < 0.03


def test_exif_orientation_holds_on_the_reduced_path():
    width, height = 1920, 1080
    drawn = (300, 200, 700, 500)
    upright = _frame(width, height, drawn)
    stored = cv2.rotate(upright, cv2.ROTATE_90_COUNTERCLOCKWISE)  # orientation 6: rotate 90 CW to display
    data = _jpeg(stored, exif_orientation=6)
    assert image_header(data, ImageLimits())[:2] == (width, height)
    tensor, params = prepare_image(data, MODEL)
    assert params[3:].tolist() == [width, height]
    np.testing.assert_allclose(_marker_box_in_original(tensor, params), drawn, atol=1.5 * 1920 / 256)


def test_detections_come_back_in_original_pixels_through_postprocess():
    """A head box where the marker lies in the model input (found in the reduced path's tensor),
    mapped back by the reduced path's params, lands on the drawn rectangle."""
    width, height, drawn = 1920, 1080, (600, 300, 1000, 700)
    tensor, params = prepare_image(_jpeg(_frame(width, height, drawn)), MODEL)
    rgb = tensor.transpose(1, 2, 0) * 255
    ys, xs = np.nonzero(np.abs(rgb - np.array(MARKER[::-1])).sum(axis=2) < 60)
    x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1  # model-input pixels, from the pixels
    prediction = np.zeros((1, 5, 1), dtype=np.float32)
    prediction[0, :, 0] = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, 0.9]
    detections = postprocess(prediction, params[None])[0]
    np.testing.assert_allclose(detections.boxes[0], drawn, atol=1.5 * width / 256)  # 1.5 model pixels


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header (SOF0) claims another size: a decompression bomb."""
    data = bytearray(_jpeg(np.full((64, 64, 3), 128, dtype=np.uint8)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def test_a_jpeg_bomb_is_refused_from_its_header_on_the_reduced_path(monkeypatch):
    from compress import detection
    from compress.detection import ImageDecodeError

    def no_decoding(*_args, **_kwargs):
        raise AssertionError("cv2.imdecode was called for a JPEG the header already refuses")

    bomb = _jpeg_claiming(8000, 8000)  # 64 MP: over the 40 MP limit, though a 1/8 decode is 1 MP
    assert image_header(bomb, ImageLimits())[:2] == (8000, 8000)
    monkeypatch.setattr(detection.cv2, "imdecode", no_decoding)
    with pytest.raises(ImageDecodeError, match="max_image_pixels"):
        prepare_image(bomb, MODEL)


def test_png_keeps_the_full_decode():
    data = cv2.imencode(".png", _frame(1280, 720, (10, 10, 50, 50)))[1].tobytes()
    image, scale, original = decode_for_model(data, MODEL)
    assert scale == 1 and image.shape[:2] == (720, 1280) and original == (1280, 720)
