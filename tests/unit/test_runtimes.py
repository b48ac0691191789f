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


@pytest.fixture(scope="module")
def two_conv_model(tmp_path_factory):
    """images [N, 3, 32, 32] -> Conv "stem" (bias) -> Relu -> Conv "head" (bias) -> box_logits."""
    rng = np.random.default_rng(1)
    tensors = [helper.make_tensor("w1", TensorProto.FLOAT, (8, 3, 3, 3), rng.normal(0, 0.3, 216)),
               helper.make_tensor("b1", TensorProto.FLOAT, (8,), rng.normal(0, 0.1, 8)),
               helper.make_tensor("w2", TensorProto.FLOAT, (4, 8, 1, 1), rng.normal(0, 0.3, 32)),
               helper.make_tensor("b2", TensorProto.FLOAT, (4,), rng.normal(0, 0.1, 4))]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w1", "b1"], ["stem_out"], name="stem", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["stem_out"], ["relu_out"], name="relu"),
         helper.make_node("Conv", ["relu_out", "w2", "b2"], ["box_logits"], name="head")],
        "two_conv", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("box_logits", TensorProto.FLOAT, ["batch", 4, 32, 32])], tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder = tmp_path_factory.mktemp("two_conv")
    onnx.save(model, str(folder / "fp32.onnx"))
    import cv2

    images = []
    for index in range(8):
        path = folder / f"calib{index}.jpg"
        cv2.imwrite(str(path), np.random.default_rng(index).integers(0, 255, (32, 32, 3), dtype=np.uint8))
        images.append(path)
    return folder / "fp32.onnx", images


def _feeds_fake_quantize(op) -> list[bool]:
    return [op.input_value(i).get_node().get_type_name() == "FakeQuantize" for i in range(op.get_input_size())]


def test_nncf_int8_keeps_the_served_float_layers_float_and_quantizes_the_rest(two_conv_model, tmp_path):
    import openvino as ov

    from compress.openvino_quantize import nncf_quantize

    fp32, images = two_conv_model
    record = nncf_quantize(fp32, tmp_path / "model.xml", (32, 32), images, float_nodes=["head"])
    quantized = ov.Core().read_model(str(tmp_path / "model.xml"))
    convolutions = [op for op in quantized.get_ordered_ops() if op.get_type_name() == "Convolution"]
    assert len(convolutions) == 2 and record["fake_quantize_ops"] > 0
    stem, head = convolutions  # graph order
    assert any(_feeds_fake_quantize(stem)), "the stem was not quantized"
    assert not any(_feeds_fake_quantize(head)), "the layer kept float in the Q/DQ file was quantized here"
    assert record["float_nodes"] == ["head"] and record["calibration_images"] == len(images)
    # still the same model: close to the FP32 answer on a calibration-like input
    batch = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    expected = create_session(fp32, 1).run(None, {"images": batch})[0]
    got = create_runtime_session(tmp_path / "model.xml", "openvino", threads=1, precision="f32").run(
        None, {"images": batch})[0]
    assert np.abs(got - expected).max() < 0.1 * np.abs(expected).max()


def test_nncf_int8_refuses_a_float_layer_it_cannot_find(two_conv_model, tmp_path):
    from compress.openvino_quantize import nncf_quantize

    fp32, images = two_conv_model
    with pytest.raises(UnsupportedModelError, match="0 of the 1 layers to keep float"):
        nncf_quantize(fp32, tmp_path / "model.xml", (32, 32), images, float_nodes=["renamed_head"])
    assert not (tmp_path / "model.xml").exists()


def test_an_nncf_ir_is_read_like_the_raw_head_onnx_it_came_from(tmp_path):
    from compress.export import read_info
    from compress.openvino_quantize import write_metadata

    # metadata as export_raw_onnx writes it, on a two-output raw-head graph
    rng = np.random.default_rng(2)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w"], ["b"], name="box"),
         helper.make_node("Reshape", ["b", "box_shape"], ["box_logits"]),
         helper.make_node("Conv", ["images", "v"], ["c"], name="cls"),
         helper.make_node("Reshape", ["c", "shape"], ["class_logits"])],
        "raw", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("box_logits", TensorProto.FLOAT, ["batch", 64, 64]),
         helper.make_tensor_value_info("class_logits", TensorProto.FLOAT, ["batch", 2, 64])],
        [helper.make_tensor("w", TensorProto.FLOAT, (64, 3, 1, 1), rng.normal(0, 1, 192)),
         helper.make_tensor("v", TensorProto.FLOAT, (2, 3, 1, 1), rng.normal(0, 1, 6)),
         helper.make_tensor("shape", TensorProto.INT64, (3,), [0, 2, 64]),
         helper.make_tensor("box_shape", TensorProto.INT64, (3,), [0, 64, 64])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in {"names": "{0: 'a', 1: 'b'}", "imgsz": "[8, 8]", "strides": "[1]", "stride": "1",
                       "head_layout": "raw"}.items():  # reg_max: from box_logits' 64 channels
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(tmp_path / "raw.onnx"))
    import openvino as ov

    ov.save_model(ov.convert_model(str(tmp_path / "raw.onnx")), str(tmp_path / "ir" / "model.xml"))
    write_metadata(tmp_path / "raw.onnx", tmp_path / "ir" / "metadata.yaml")
    onnx_info, ir_info = read_info(tmp_path / "raw.onnx"), read_info(tmp_path / "ir" / "model.xml")
    for field in ("image_size", "names", "strides", "reg_max", "head_layout"):
        assert getattr(ir_info, field) == getattr(onnx_info, field), field
    assert ir_info.head_layout == "raw" and ir_info.reg_max == onnx_info.reg_max == 16
