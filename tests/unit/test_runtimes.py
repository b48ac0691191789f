"""OpenVINO behind the session shape ONNX Runtime has, and latency timed in one worker process per model."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from compress.benchmark import WorkerTimer, latency_in_workers
from compress.errors import ToolkitError, UnsupportedModelError
from compress.onnx_session import create_session, execution_providers
from compress.runtimes import create_runtime_session

SIZE = 16


@pytest.fixture(scope="module")
def conv_model(tmp_path_factory):
    """images [N, 3, 16, 16] -> Conv 3x3 (8 channels) -> Sigmoid, dynamic batch, random weights."""
    rng = np.random.default_rng(0)
    weights = helper.make_tensor("w", TensorProto.FLOAT, (8, 3, 3, 3), rng.normal(0, 0.5, (8, 3, 3, 3)).ravel())
    bias = helper.make_tensor("b", TensorProto.FLOAT, (8,), rng.normal(0, 0.1, 8))
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
         helper.make_node("Sigmoid", ["conv"], ["scores"])],
        "conv", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 8, SIZE, SIZE])], [weights, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("model") / "conv.onnx"
    onnx.save(model, str(path))
    return path


def test_openvino_f32_gives_onnxruntimes_answer_at_every_batch_size(conv_model):
    reference = create_session(conv_model, 1)
    session = create_runtime_session(conv_model, "openvino", threads=1, precision="f32")
    assert [o.name for o in session.get_outputs()] == ["scores"]
    for batch in (1, 3, 8):  # one compiled model per input shape
        images = np.random.default_rng(batch).random((batch, 3, SIZE, SIZE), dtype=np.float32)
        expected = reference.run(None, {"images": images})[0]
        got = session.run(None, {"images": images})[0]
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() < 1e-5
    assert session.inference_precision() == "f32"


def test_openvino_default_precision_is_read_back_not_assumed(conv_model):
    import openvino as ov

    session = create_runtime_session(conv_model, "openvino", threads=1, precision="default")
    session.run(None, {"images": np.zeros((1, 3, SIZE, SIZE), np.float32)})
    chosen = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").to_string()
    assert session.inference_precision() == chosen  # bf16 on a CPU with AVX-512 BF16 or AMX, f32 elsewhere


def test_a_file_openvino_cannot_read_is_one_error(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(UnsupportedModelError) as error:
        create_runtime_session(broken, "openvino")
    assert str(broken) in str(error.value) and "\n" not in str(error.value)


def test_unknown_runtime_and_precision_are_refused(conv_model):
    with pytest.raises(ValueError, match="not one of onnxruntime, openvino"):
        create_runtime_session(conv_model, "tvm")
    with pytest.raises(ValueError, match="precision"):
        create_runtime_session(conv_model, "openvino", precision="fp8")


def test_each_model_is_timed_in_a_process_of_its_own(conv_model):
    timer = WorkerTimer(conv_model, (SIZE, SIZE), threads=1, runtime="openvino")
    try:
        # read back from the compiled model, not echoed from the request
        assert timer.facts["threads"] == 1 and timer.facts["inference_precision"] == "f32"
        assert all(timer(batch) > 0 for batch in (1, 8, 1))
    finally:
        timer.close()
    assert timer.process.poll() == 0  # the worker ends when its pipe closes

    rounds = {1: 4, 8: 3}
    results = latency_in_workers({"ort": {"path": conv_model}, "ov": {"path": conv_model, "runtime": "openvino"}},
                                 (SIZE, SIZE), threads=1, rounds=rounds, pause_s=0)
    pids = {results[name]["facts"]["pid"] for name in ("ort", "ov")}
    assert len(pids) == 2 and os.getpid() not in pids  # one process per model, none of them this one
    for name in ("ort", "ov"):
        for batch, count in rounds.items():
            assert len(results[name][f"bs{batch}_rounds"]) == count
            assert results[name][f"bs{batch}_ms"] == pytest.approx(np.percentile(results[name][f"bs{batch}_rounds"], 10),
                                                                  abs=1e-3)
    assert results["ort"]["facts"]["providers"] == execution_providers()
    assert results["ort"]["facts"]["threads"] == 1 and results["ov"]["facts"]["providers"] == ["OpenVINO CPU"]


def test_a_worker_that_cannot_start_is_one_error(tmp_path):
    with pytest.raises(ToolkitError, match="benchmark worker .*missing.onnx"):
        WorkerTimer(tmp_path / "missing.onnx", (SIZE, SIZE), threads=1)


def test_a_bad_runtime_for_a_worker_is_refused_by_its_parser(conv_model):
    with pytest.raises(SystemExit):
        __import__("compress.benchmark", fromlist=["main"]).main(["--worker", "--runtime", "tvm", "--imgsz", "16",
                                                                  f"model={conv_model}"])
