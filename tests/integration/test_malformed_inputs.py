"""Malformed input against the live server, each kind sent concurrently with good requests.

For every kind: the bad request gets a 4xx-class error whose message names the reason (or, for
odd-but-valid images, the same detections as in-process); every good request sent beside it
succeeds with the in-process detections; the server stays ready. The test repository waits
20 ms in every step's queue, so bad and good requests share `execute()` calls: one bad image
must fail only its own request.
"""

from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from compress.errors import BadImageError
from compress.local_detector import LocalDetector
from loadtest.bad_frames import thin_png
from tests.conftest import TEST_CONF
from tests.images import ALL_CASES
from tests.integration.test_served_ensemble import assert_same_detections
from tools.client import TritonDetectorClient, encoded_batch

pytestmark = pytest.mark.integration

GOOD_BESIDE_EACH_BAD = 6
CLIENT_ERRORS = {"400", "404", "StatusCode.INVALID_ARGUMENT", "StatusCode.NOT_FOUND"}


@pytest.fixture(scope="module")
def local(tiny_onnx):
    return LocalDetector(tiny_onnx, conf_threshold=TEST_CONF)


@pytest.fixture(scope="module")
def good(local, val_images, photos):
    """Good payloads and their in-process detections (the served ones must equal them)."""
    payloads = [p.read_bytes() for p in (val_images[:2] + photos)]
    return [(payload, local.detect([payload])[0]) for payload in payloads]


@pytest.fixture(scope="module")
def photo(photos):
    return cv2.imread(str(next(p for p in photos if p.name == "bus.jpg")))


def url_for(triton, protocol):
    return triton.http_url if protocol == "http" else triton.grpc_url


def beside_good_requests(triton, protocol, bad_call, good):
    """Run `bad_call(client)` while GOOD_BESIDE_EACH_BAD good requests are in flight; check the good ones."""
    local_client = threading.local()
    start = threading.Barrier(GOOD_BESIDE_EACH_BAD + 1)

    def client():
        if not hasattr(local_client, "value"):
            local_client.value = TritonDetectorClient(url_for(triton, protocol), protocol)
        return local_client.value

    def send_good(index):
        payload, expected = good[index % len(good)]
        start.wait(timeout=30)
        return client().detect([payload])[0], expected

    def send_bad():
        start.wait(timeout=30)
        try:
            return bad_call(client())
        except Exception as error:  # the caller inspects what came back
            return error

    with ThreadPoolExecutor(max_workers=GOOD_BESIDE_EACH_BAD + 1) as pool:
        bad_future = pool.submit(send_bad)
        good_futures = [pool.submit(send_good, i) for i in range(GOOD_BESIDE_EACH_BAD)]
        for future in good_futures:
            served, expected = future.result(timeout=60)  # raises if a good request failed
            assert_same_detections(served, expected)
        outcome = bad_future.result(timeout=60)
    assert triton.is_ready()
    return outcome


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.name)
def test_image_kind_beside_good_requests(triton, local, good, photo, protocol, case):
    payload = case.make(photo)
    outcome = beside_good_requests(triton, protocol, lambda client: client.detect([payload]), good)
    if case.outcome == "served":
        assert not isinstance(outcome, Exception), f"{case.name} was refused: {outcome}"
        assert_same_detections(outcome[0], local.detect([payload])[0])
    else:
        assert isinstance(outcome, BadImageError), f"{case.name}: expected a 400-class refusal, got {outcome!r}"
        assert re.search(case.reason, str(outcome)), str(outcome)


def raw(inputs, **kwargs):
    return lambda client: client.infer_raw(inputs, **kwargs)


def image(val_images, index=0) -> bytes:
    return val_images[index].read_bytes()


REQUEST_CASES = {
    # name: (build the call from the val images, regex the error message must match)
    "wrong_dtype": (lambda v: raw({"IMAGE": np.zeros((1, 1), dtype=np.float32)}), r"data-type|datatype"),
    "wrong_shape": (lambda v: raw({"IMAGE": np.array([[image(v), image(v)]], dtype=np.object_)}), r"shape"),
    "wrong_input_name": (lambda v: raw({"PIXELS": encoded_batch([image(v)])}), r"PIXELS|input"),
    "no_inputs": (lambda v: raw({}), r"input"),
    "oversize_batch": (lambda v: raw({"IMAGE": encoded_batch([image(v)] * 9)}), r"batch"),
    "empty_batch": (lambda v: raw({"IMAGE": np.zeros((0, 1), dtype=np.object_)}), r"batch|shape|elements|no images"),
    "unknown_version": (lambda v: raw({"IMAGE": encoded_batch([image(v)])}, model_version="7"), r"version|unavailable|not found"),
    "mixed_good_and_bad_in_one_request": (
        lambda v: raw({"IMAGE": encoded_batch([image(v), b"not an image", image(v, 1)])}), r"image 2 of 3 in the request"),
    "zero_length_element_in_a_batch": (
        lambda v: raw({"IMAGE": encoded_batch([image(v), image(v, 1), b""])}), r"image 3 of 3 in the request.*0 bytes"),
}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("name", sorted(REQUEST_CASES))
def test_malformed_request_beside_good_requests(triton, good, val_images, protocol, name):
    build, reason = REQUEST_CASES[name]
    outcome = beside_good_requests(triton, protocol, build(val_images), good)
    assert isinstance(outcome, InferenceServerException), f"{name}: expected an error, got {type(outcome)}"
    assert str(outcome.status()) in CLIENT_ERRORS, f"{name}: status {outcome.status()}: {outcome.message()}"
    assert re.search(reason, outcome.message() or "", flags=re.I), outcome.message()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_unknown_model_beside_good_requests(triton, good, val_images, protocol):
    def call(_client):
        with TritonDetectorClient(url_for(triton, protocol), protocol, model="no_such_model") as other:
            return other.infer_raw({"IMAGE": encoded_batch([image(val_images)])})

    outcome = beside_good_requests(triton, protocol, call, good)
    assert isinstance(outcome, InferenceServerException)
    assert str(outcome.status()) in CLIENT_ERRORS | {"StatusCode.UNAVAILABLE"}, outcome.status()
    assert "no_such_model" in outcome.message()


def test_one_bad_frame_among_sixty_fails_only_itself(triton, good):
    """A burst as cameras send it: 60 concurrent single-image gRPC requests, 6 of them a 1x600 PNG."""
    thin = thin_png(1, 600)
    payloads = [thin if i % 10 == 0 else good[i % len(good)][0] for i in range(60)]
    local_client = threading.local()

    def send(payload):
        if not hasattr(local_client, "value"):
            local_client.value = TritonDetectorClient(triton.grpc_url, "grpc")
        try:
            return local_client.value.detect([payload])
        except BadImageError as error:
            return error

    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(send, payloads))
    failed = [i for i, r in enumerate(results) if isinstance(r, Exception)]
    assert failed == [i for i in range(60) if i % 10 == 0]
    assert all("min_image_side" in str(results[i]) for i in failed)
