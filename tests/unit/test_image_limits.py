"""Image limits, per-image isolation maths and a property-based fuzz of decode + letterbox.

`FUZZ_EXAMPLES` sets the fuzz size (`make test` runs a few hundred, `make fuzz` thousands).
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compress import detection
from compress.detection import (ImageDecodeError, ImageLimits, decode_image, letterbox, postprocess, prepare_image,
                                run_isolated)
from loadtest.bad_frames import png_claiming
from tests.images import ALL_CASES


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    from ultralytics.utils import ASSETS

    return cv2.imread(str(Path(ASSETS) / "bus.jpg"))


def _content(tensor: np.ndarray, params: np.ndarray) -> np.ndarray:
    """The letterboxed tensor's picture (pads cut off), HWC RGB in 0..1."""
    gain, pad_x, pad_y, width, height = params
    w, h = round(width * gain), round(height * gain)
    x, y = int(round(pad_x - 0.1)), int(round(pad_y - 0.1))
    return tensor[:, y:y + h, x:x + w].transpose(1, 2, 0)


def _error(content: np.ndarray, bgr: np.ndarray) -> float:
    """Mean |difference| between the tensor's picture and `bgr` as it should look (RGB in 0..1),
    computed apart from the code under test."""
    expected = cv2.resize(bgr, (content.shape[1], content.shape[0]), interpolation=cv2.INTER_AREA)[:, :, ::-1] / 255.0
    return float(np.abs(content - expected).mean())


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.name)
def test_each_kind_is_served_or_refused_with_its_reason(case, photo):
    data = case.make(photo)
    if case.outcome == "served":
        tensor, params = prepare_image(data, (256, 256))  # what the served preprocess runs
        assert tensor.shape == (3, 256, 256) and np.isfinite(tensor).all()
        assert params[0] > 0
        # the picture a correct decoder shows: upright and in its colours (lossy formats and resampling within 0.06
        # of 0..1 per pixel), much closer to it than to the same picture upside down or with R and B
        # swapped (references resized here with OpenCV, apart from the letterbox under test)
        shown, content = case.shows(photo), _content(tensor, params)
        error = _error(content, shown)
        assert error < 0.06, error
        assert error < 0.3 * _error(content, cv2.rotate(shown, cv2.ROTATE_180)), error
        if case.colour:
            assert error < 0.75 * _error(content, np.ascontiguousarray(shown[:, :, ::-1])), error
    else:
        with pytest.raises(ImageDecodeError, match=case.reason):
            prepare_image(data, (256, 256))


def test_limits_are_checked_before_any_pixel_is_decoded(monkeypatch):
    def no_decoding(*_args, **_kwargs):
        raise AssertionError("cv2.imdecode was called for an image the header already refuses")

    monkeypatch.setattr(detection.cv2, "imdecode", no_decoding)
    for data, reason in [(png_claiming(40000, 40000), "max_image_pixels"), (png_claiming(7000, 7000), "max_image_pixels"),
                         (png_claiming(1, 600), "min_image_side"), (b"\x89PNG" + bytes(100), "not a decodable")]:
        with pytest.raises(ImageDecodeError, match=reason):
            decode_image(data)
        with pytest.raises(ImageDecodeError, match=reason):  # the reduced-decode path reads the same header
            prepare_image(data, (256, 256))


def test_limits_are_configurable():
    data = png_claiming(100, 100)
    with pytest.raises(ImageDecodeError, match="max_image_pixels=9,999"):
        decode_image(data, ImageLimits(max_pixels=9_999))
    with pytest.raises(ImageDecodeError, match="max_image_bytes=10"):
        decode_image(data, ImageLimits(max_bytes=10))
    assert ImageLimits.from_parameters({"max_image_pixels": "5", "min_image_side": "2"}) == ImageLimits(5, ImageLimits.max_bytes, 2)


@pytest.mark.parametrize("shape", [(1, 600), (600, 1), (1, 1), (3, 4000)])
def test_letterbox_never_makes_a_zero_size_axis(shape):
    tensor, params = letterbox(np.full((*shape, 3), 200, dtype=np.uint8), (256, 320))
    assert tensor.shape == (3, 256, 320)
    assert (tensor != 114 / 255).any()  # the image itself is in there, not only padding


def test_non_finite_head_values_are_dropped_not_raised():
    prediction = np.zeros((2, 4 + 3, 6), dtype=np.float32)
    prediction[:, :4] = np.array([50, 50, 20, 20], dtype=np.float32)[None, :, None]
    prediction[:, 4] = 0.9
    prediction[0, 0, :3] = np.nan
    prediction[0, 2, 3] = np.inf
    prediction[1, 5, :] = np.nan  # NaN scores of another class
    letterbox_params = np.array([[1, 0, 0, 100, 100]] * 2, dtype=np.float32)
    with np.errstate(all="ignore"):
        results = postprocess(prediction, letterbox_params, 0.25, 0.45)
    assert all(np.isfinite(r.boxes).all() and np.isfinite(r.scores).all() for r in results)
    assert len(results[0]) == 1 and len(results[1]) == 1  # the finite anchors, one box after NMS


def test_invalid_letterbox_parameters_raise_value_error():
    with pytest.raises(ValueError, match="letterbox"):
        postprocess(np.zeros((1, 5, 4), dtype=np.float32), np.array([[0, 0, 0, 10, 10]], dtype=np.float32))


def test_run_isolated_fails_only_the_bad_request():
    calls = []

    def run_batch(requests):
        calls.append(list(requests))
        if "bad" in requests:
            raise ValueError("bad request")
        return [f"ok:{r}" for r in requests]

    responses = run_isolated(["a", "bad", "c"], run_batch, lambda error: f"error:{error}")
    assert responses == ["ok:a", "error:bad request", "ok:c"]
    assert calls[0] == ["a", "bad", "c"]  # the batch was tried first
    assert run_isolated(["a", "c"], run_batch, str) == ["ok:a", "ok:c"] and calls[-1] == ["a", "c"]


# --- property-based fuzz: mutated real JPEG/PNG bytes through decode + letterbox ---------------

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))


def seeds() -> dict[str, bytes]:
    from ultralytics.utils import ASSETS

    photo = cv2.imread(str(Path(ASSETS) / "zidane.jpg"))
    image = cv2.resize(photo, (96, 54))
    seeds = {fmt: cv2.imencode(fmt, image)[1].tobytes() for fmt in (".jpg", ".png", ".bmp", ".webp")}
    # large enough for a 1/4-scale decode at the fuzz's 128x160 input: the DCT-reduced path is fuzzed too
    seeds["reduced.jpg"] = cv2.imencode(".jpg", cv2.resize(photo, (640, 360)))[1].tobytes()
    return seeds


SEEDS = seeds()

mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("overwrite"), st.integers(0, 64), st.binary(min_size=1, max_size=16)),  # header fields
)


def mutate(data: bytes, edits) -> bytes:
    data = bytearray(data)
    for kind, where, value in edits:
        where = where % max(1, len(data))
        if kind == "flip":
            if data:
                data[where] ^= value
        elif kind == "truncate":
            del data[where:]
        elif kind == "insert":
            data[where:where] = value
        else:
            data[where:where + len(value)] = value
    return bytes(data)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(seed=st.sampled_from(sorted(SEEDS)), edits=st.lists(mutation, min_size=1, max_size=6))
def test_fuzz_decode_and_letterbox_raise_only_the_image_error(seed, edits):
    data = mutate(SEEDS[seed], edits)
    try:
        tensor, params = prepare_image(data, (128, 160))  # reduced decode where the frame is large enough
    except ImageDecodeError:
        return
    assert tensor.shape == (3, 128, 160) and tensor.dtype == np.float32 and np.isfinite(tensor).all()
    assert np.isfinite(params).all() and params[0] > 0
