"""Dynamic batching under concurrent load, bad inputs, readiness and clean shutdown."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from compress.errors import BadImageError
from tools.client import TritonDetectorClient, encoded_batch

pytestmark = pytest.mark.integration


def detector_counts(server) -> tuple[float, float]:
    from loadtest.metrics import scrape

    detector = scrape(server.metrics_url)["detector"]
    return detector["nv_inference_count"], detector["nv_inference_exec_count"]


@pytest.fixture(scope="module")
def shipped_triton(tiny_onnx, tmp_path_factory):
    """A server on the batching settings `make repo` ships (its short batching wait, preferred
    sizes, instances), not the test fixture's 20 ms: batching must happen with what users get.
    Only the queue timeout is off, so that a busy CI machine sheds nothing and every request of
    the test counts (the timeout decides whether a request is shed, not how batches form)."""
    from compress.export import read_info
    from tests.conftest import TEST_CONF, copy_committed_repository
    from tools import build_repo
    from tools.server import TritonServer

    repo = copy_committed_repository(tmp_path_factory.mktemp("shipped"))
    # the tiny model's threshold, so the frames have boxes to compare
    build_repo.build(repo, tiny_onnx, build_repo.settings_for(read_info(tiny_onnx), queue_timeout_us=0,
                                                              conf_threshold=TEST_CONF), {"stage": "export"})
    with TritonServer(repo, log_path=tmp_path_factory.mktemp("logs") / "server.log", exit_timeout_s=5) as server:
        yield server


def test_dynamic_batching_forms_batches_with_shipped_settings(shipped_triton, tiny_onnx, val_images):
    import tritonclient.grpc as grpcclient

    from compress.export import read_info
    from tools.build_repo import settings_for

    shipped = settings_for(read_info(tiny_onnx))
    client = grpcclient.InferenceServerClient(shipped_triton.grpc_url)
    live = client.get_model_config("detector", as_json=True)["config"]
    client.close()
    # what the server runs is the shipped batching: its wait (not the test fixture's 20 ms) and sizes
    batching = live["dynamic_batching"]
    assert int(batching["max_queue_delay_microseconds"]) == shipped.queue_delay_us < 20_000
    assert [int(b) for b in batching["preferred_batch_size"]] == shipped.preferred_batch_sizes
    assert live["instance_group"][0]["count"] == shipped.detector_instances
    before_count, before_exec = detector_counts(shipped_triton)
    payload = val_images[0].read_bytes()
    with TritonDetectorClient(shipped_triton.grpc_url, "grpc") as client:
        alone = client.detect([payload])[0]
    assert len(alone), "the frame has no boxes: a comparison of nothing would prove nothing"

    def send(_):
        with TritonDetectorClient(shipped_triton.grpc_url, "grpc") as client:
            return client.detect([payload])[0]

    with ThreadPoolExecutor(max_workers=8) as pool:
        answered = list(pool.map(send, range(96)))
    count, executions = detector_counts(shipped_triton)
    inferences, runs = count - before_count, executions - before_exec
    assert len(answered) == 96 and inferences == 96 + 1  # every request answered, each frame inferred once
    for batched in answered:  # a frame batched with others gets the boxes it gets alone
        assert_same_detections(batched, alone)
    assert runs <= 0.75 * inferences, f"{inferences} inferences in {runs} executions: few batches formed"


def assert_same_detections(got, expected, atol: float = 1e-3) -> None:
    """The same boxes (pixels), scores and classes, up to float noise between batch sizes."""
    assert len(got) == len(expected)
    order_got, order_expected = np.argsort(-got.scores, kind="stable"), np.argsort(-expected.scores, kind="stable")
    np.testing.assert_array_equal(got.classes[order_got], expected.classes[order_expected])
    np.testing.assert_allclose(got.scores[order_got], expected.scores[order_expected], atol=atol)
    np.testing.assert_allclose(got.boxes[order_got], expected.boxes[order_expected], atol=0.05)


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
    """Every kind of bad request, then the same good frames again: the same answers as before them."""
    frames = [p.read_bytes() for p in val_images[:3]]
    with TritonDetectorClient(triton.grpc_url, "grpc") as client:
        before = client.detect(frames)
    with TritonDetectorClient(triton.http_url) as client:
        for bad in ({"IMAGE": np.zeros((1, 1), dtype=np.float32)}, {"IMAGE": encoded_batch([frames[0]] * 9)}, {}):
            with pytest.raises(InferenceServerException):
                client.infer_raw(bad)
        for payload in (b"not an image", b"", frames[0][:64]):
            with pytest.raises(BadImageError):
                client.detect([payload])
    with TritonDetectorClient(triton.grpc_url, "grpc") as client:
        after = client.detect(frames)
    assert len(after) == 3 and sum(len(d) for d in before) > 0
    for got, expected in zip(after, before):
        assert_same_detections(got, expected, atol=1e-6)


def test_unknown_model_is_404(triton, val_images):
    with TritonDetectorClient(triton.http_url, model="no_such_model") as client:
        with pytest.raises(InferenceServerException) as info:
            client.infer_raw({"IMAGE": encoded_batch([val_images[0].read_bytes()])})
    assert str(info.value.status()) == "404"  # Triton: the model is not found, not a malformed request
    assert "no_such_model" in info.value.message()


def test_clean_shutdown(served_repo, tmp_path):
    from tools.server import TritonServer

    server = TritonServer(served_repo, log_path=tmp_path / "server.log", exit_timeout_s=5).start()
    with TritonDetectorClient(server.grpc_url, "grpc") as client:
        client.check_ready()
    assert server.stop() == 0
