"""Dynamic batching under concurrent load, bad inputs, readiness and clean shutdown."""

from __future__ import annotations

import re
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from tools.client import TritonDetectorClient, encoded_batch
from tools.errors import BadImageError

pytestmark = pytest.mark.integration


def detector_counts(server) -> tuple[float, float]:
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()

    def metric(name):
        match = re.search(rf'^{name}{{[^}}]*model="detector"[^}}]*}} (\S+)$', text, re.M)
        assert match, f"{name} for the detector is missing from the metrics"
        return float(match.group(1))

    return metric("nv_inference_count"), metric("nv_inference_exec_count")


def test_dynamic_batching_forms_batches(triton, val_images):
    before_count, before_exec = detector_counts(triton)
    payload = val_images[0].read_bytes()

    def send(_):
        with TritonDetectorClient(triton.http_url) as client:
            return len(client.detect([payload]))

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(send, range(48)))
    count, executions = detector_counts(triton)
    inferences, runs = count - before_count, executions - before_exec
    assert inferences == 48
    assert runs < inferences, f"{inferences} inferences in {runs} executions: no batches formed"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("payload", [b"not an image at all", b"", b"\xff\xd8\xff\xe0" + b"\x00" * 64])
def test_corrupt_or_empty_image_is_a_client_error(triton, protocol, payload):
    url = triton.http_url if protocol == "http" else triton.grpc_url
    with TritonDetectorClient(url, protocol) as client:
        with pytest.raises(BadImageError, match="not a decodable image"):
            client.detect([payload])
    assert triton.is_ready()


def raw_error(triton, inputs) -> InferenceServerException:
    with TritonDetectorClient(triton.http_url) as client:
        with pytest.raises(InferenceServerException) as info:
            client.infer_raw(inputs)
    return info.value


def test_wrong_dtype_is_400(triton):
    error = raw_error(triton, {"IMAGE": np.zeros((1, 1), dtype=np.float32)})
    assert str(error.status()) == "400" and "data-type" in error.message().lower()
    assert triton.is_ready()


def test_oversize_batch_is_400(triton, val_images):
    too_many = encoded_batch([val_images[0].read_bytes()] * 9)  # served_repo has max_batch_size 8
    error = raw_error(triton, {"IMAGE": too_many})
    assert str(error.status()) == "400" and "batch" in error.message().lower()
    assert triton.is_ready()


def test_empty_request_is_400(triton):
    with TritonDetectorClient(triton.http_url) as client:
        with pytest.raises(InferenceServerException) as info:
            client.infer_raw({})
    assert str(info.value.status()) == "400"
    assert triton.is_ready()


def test_good_request_after_bad_ones(triton, val_images):
    with TritonDetectorClient(triton.grpc_url, "grpc") as client:
        assert len(client.detect([p.read_bytes() for p in val_images[:3]])) == 3


def test_unknown_model_is_404(triton, val_images):
    with TritonDetectorClient(triton.http_url, model="no_such_model") as client:
        with pytest.raises(InferenceServerException) as info:
            client.infer_raw({"IMAGE": encoded_batch([val_images[0].read_bytes()])})
    assert str(info.value.status()) in ("400", "404")


def test_clean_shutdown(served_repo, tmp_path):
    from tools.server import TritonServer

    server = TritonServer(served_repo, log_path=tmp_path / "server.log", exit_timeout_s=5).start()
    with TritonDetectorClient(server.grpc_url, "grpc") as client:
        client.check_ready()
    assert server.stop() == 0
