"""Triton configs: protobuf messages that round-trip through config.pbtxt and wire up correctly."""

from __future__ import annotations

import numpy as np
import pytest

from tools import triton_config as tc


def settings(**kwargs) -> tc.RepositorySettings:
    return tc.RepositorySettings(image_size=(256, 256), num_classes=4, **kwargs)


@pytest.mark.parametrize("target", tc.TARGETS)
@pytest.mark.parametrize("layout", tc.HEAD_LAYOUTS)
def test_written_configs_carry_the_settings(tmp_path, target, layout):
    """What config.pbtxt holds on disk, read back: the settings' values, per model."""
    s = settings(target=target, head_layout=layout, max_batch_size=8, queue_delay_us=1500, detector_instances=3,
                 max_queue_size=12, queue_timeout_us=40_000)
    on_disk = {c.name: tc.read_config(tc.write_config(c, tmp_path / c.name)) for c in tc.all_configs(s)}
    assert set(on_disk) == {"preprocess", "detector", "postprocess", "yolo"}
    assert {c.max_batch_size for c in on_disk.values()} == {8}
    detector = on_disk["detector"]
    assert detector.instance_group[0].count == 3
    assert detector.dynamic_batching.max_queue_delay_microseconds == 1500
    assert list(detector.dynamic_batching.preferred_batch_size) == [4, 8]
    policy = detector.dynamic_batching.default_queue_policy
    assert (policy.max_queue_size, policy.default_timeout_microseconds) == (12, 40_000)
    # 256x256, strides 8/16/32: 1344 anchors; raw: 4 x 16 DFL bins and 4 class logits, decoded: 4 + 4 rows
    heads = {"raw": {"box_logits": [64, 1344], "class_logits": [4, 1344]}, "decoded": {"output0": [8, 1344]}}[layout]
    assert {o.name: list(o.dims) for o in detector.output} == heads
    assert {i.name: list(i.dims) for i in on_disk["postprocess"].input} == {**heads, "LETTERBOX": [5]}
    assert list(detector.input[0].dims) == [3, 256, 256]
    assert [step.model_name for step in on_disk["yolo"].ensemble_scheduling.step] == ["preprocess", "detector",
                                                                                      "postprocess"]


def test_detector_config_per_target():
    local = tc.detector_config(settings(target="local", detector_instances=2, queue_delay_us=500))
    assert local.backend == "python" and local.instance_group[0].count == 2
    assert local.dynamic_batching.max_queue_delay_microseconds == 500
    # the largest preferred size caps batches from a long queue: the default reaches max_batch_size
    assert list(local.dynamic_batching.preferred_batch_size) == [4, 8, 16]
    assert settings(max_batch_size=8).preferred_batch_sizes == [4, 8]
    assert settings(max_batch_size=2).preferred_batch_sizes == [2]
    assert local.parameters["allow_spinning"].string_value == "0"
    ort = tc.detector_config(settings(target="onnxruntime", device="gpu"))
    assert ort.platform == "onnxruntime_onnx" and ort.instance_group[0].kind == ort.instance_group[0].KIND_GPU
    trt = tc.detector_config(settings(target="tensorrt"))
    assert trt.platform == "tensorrt_plan"
    # 256x256 with strides 8/16/32 -> 32*32 + 16*16 + 8*8 anchors
    assert list(local.output[0].dims) == [4 + 4, 1344]


def test_ensemble_wiring_is_consistent():
    """Each step reads only tensors the ensemble input or an earlier step produced, with matching names."""
    for layout in tc.HEAD_LAYOUTS:
        s = settings(head_layout=layout)
        models = {c.name: c for c in tc.all_configs(s)}
        ensemble = models[tc.ENSEMBLE_NAME]
        available = {i.name for i in ensemble.input}
        for step in ensemble.ensemble_scheduling.step:
            model = models[step.model_name]
            assert set(step.input_map) == {i.name for i in model.input}
            assert set(step.input_map.values()) <= available
            assert set(step.output_map) <= {o.name for o in model.output}
            available |= set(step.output_map.values())
        assert {o.name for o in ensemble.output} <= available


def load_python_model(monkeypatch, name: str):
    """model_repository/<name>/1/model.py imported as Triton's Python backend imports it, with the
    shared maths (yolo_ops, copied beside it by the builder) taken from compress.detection."""
    import importlib.util
    import sys
    import types

    from compress import detection

    stub = types.ModuleType("triton_python_backend_utils")  # initialize() uses none of it
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", stub)
    monkeypatch.setitem(sys.modules, "yolo_ops", detection)
    monkeypatch.setattr(sys, "path", list(sys.path))  # model.py prepends its own folder
    path = tc_root() / "model_repository" / name / "1" / "model.py"
    spec = importlib.util.spec_from_file_location(f"served_{name}_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def model_args(config, tmp_path) -> dict:
    """initialize()'s args as Triton hands them over: the config as written to disk, in JSON."""
    from google.protobuf import json_format

    on_disk = tc.read_config(tc.write_config(config, tmp_path / config.name))
    return {"model_config": json_format.MessageToJson(on_disk, preserving_proto_field_name=True)}


@pytest.mark.parametrize("layout", tc.HEAD_LAYOUTS)
def test_postprocess_model_reads_the_configured_thresholds(monkeypatch, tmp_path, layout):
    s = settings(conf_threshold=0.4, iou_threshold=0.6, max_det=50, head_layout=layout)
    model = load_python_model(monkeypatch, "postprocess").TritonPythonModel()
    model.initialize(model_args(tc.postprocess_config(s), tmp_path))
    assert (model.conf, model.iou, model.max_det) == (0.4, 0.6, 50)
    assert model.size == (256, 256) and model.strides == (8, 16, 32)
    assert model.head_names == [name for name, _ in s.head_outputs()]


@pytest.mark.parametrize("bad", [
    {"target": "tflite"}, {"max_batch_size": 0}, {"preferred_batch_sizes": [32]}, {"detector_instances": 0},
    {"conf_threshold": 1.5}, {"image_size": (250, 250)}, {"device": "tpu"},
    {"max_queue_size": -1}, {"queue_timeout_us": -5}, {"min_image_side": 0}, {"max_image_pixels": 0},
    {"pixel_type": "float16"}, {"pixel_type": "uint8", "target": "tensorrt"},
    {"runtime": "tflite"}, {"runtime": "openvino", "target": "onnxruntime"}, {"runtime": "openvino", "device": "gpu"},
])
def test_invalid_settings_are_rejected(bad):
    kwargs = {"image_size": (256, 256), "num_classes": 4, **bad}
    with pytest.raises(tc.ConfigError):
        tc.RepositorySettings(**kwargs)


def test_build_keeps_tuned_settings_unless_overridden(tmp_path):
    from argparse import Namespace
    from types import SimpleNamespace

    from tests.unit.test_cli_errors import container_repository
    from tools.build_repo import previous_record, settings_from_args

    tuned = {"queue_delay_us": 8000, "preferred_batch_sizes": [4], "detector_instances": 2,
             "preprocess_instances": 2, "postprocess_instances": 3}
    container_repository(tmp_path, "local", tuned={"streams": 8}, image_size=(256, 256), **tuned)
    info = SimpleNamespace(image_size=(256, 256), num_classes=4, head_layout="raw", strides=(8, 16, 32), reg_max=16)
    args = Namespace(repo=tmp_path, target="local", detector_instances=1)
    settings = settings_from_args(args, info, previous_record(tmp_path))
    assert settings.detector_instances == 1  # the explicit override wins
    assert (settings.queue_delay_us, settings.postprocess_instances, settings.preferred_batch_sizes) == (8000, 3, [4])
    args_other_target = Namespace(repo=tmp_path, target="onnxruntime")
    assert settings_from_args(args_other_target, info, previous_record(tmp_path)).queue_delay_us == \
        tc.RepositorySettings((256, 256), 4).queue_delay_us


def test_every_step_sheds_load_with_a_bounded_rejecting_queue():
    s = settings(max_queue_size=12, queue_timeout_us=50_000, queue_delay_us=3000)
    for config in (tc.preprocess_config(s), tc.detector_config(s), tc.postprocess_config(s)):
        policy = config.dynamic_batching.default_queue_policy
        assert policy.timeout_action == policy.REJECT, config.name
        assert (policy.max_queue_size, policy.default_timeout_microseconds) == (12, 50_000), config.name
    # the batching wait is paid once, at the detector
    assert tc.detector_config(s).dynamic_batching.max_queue_delay_microseconds == 3000
    assert tc.preprocess_config(s).dynamic_batching.max_queue_delay_microseconds == 0
    assert tc.postprocess_config(s).dynamic_batching.max_queue_delay_microseconds == 0


def test_image_limits_reach_the_preprocess_parameters():
    params = tc.preprocess_config(settings(max_image_pixels=1000, max_image_bytes=2000, min_image_side=3)).parameters
    assert {k: params[k].string_value for k in ("max_image_pixels", "max_image_bytes", "min_image_side")} == {
        "max_image_pixels": "1000", "max_image_bytes": "2000", "min_image_side": "3"}


def tc_root():
    from pathlib import Path

    return Path(tc.__file__).resolve().parents[1]


@pytest.mark.parametrize("pixel_type", ["uint8", "float32"])
def test_warmup_covers_every_step(tmp_path, pixel_type):
    """Each step model warms up with inputs matching its own declared inputs; data files get written."""
    from tools.build_repo import write_warmup_files

    s = settings(head_layout="raw", max_batch_size=8, pixel_type=pixel_type)
    # preprocess warms itself in initialize() (test below): Triton 2.51 misreads BYTES warmup files
    assert not tc.preprocess_config(s).model_warmup
    for config in (tc.detector_config(s), tc.postprocess_config(s)):
        assert config.model_warmup, config.name
        declared = {i.name: (i.data_type, list(i.dims)) for i in config.input}
        for warmup in config.model_warmup:
            assert 1 <= warmup.batch_size <= config.max_batch_size
            assert {n: (w.data_type, list(w.dims)) for n, w in warmup.inputs.items()} == declared
    assert [w.batch_size for w in tc.detector_config(s).model_warmup] == [1, 8]
    write_warmup_files(tmp_path, s)
    for config in (tc.postprocess_config(s),):
        for warmup in config.model_warmup:
            for item in warmup.inputs.values():
                if item.input_data_file:
                    assert (tmp_path / config.name / tc.WARMUP_DIR / item.input_data_file).stat().st_size > 0


def test_preprocess_decodes_a_frame_while_it_loads(monkeypatch, tmp_path):
    """The first real request is not a cold start: initialize() decodes and letterboxes a JPEG
    at the configured size and pixel type before Triton routes any request to the model."""
    module = load_python_model(monkeypatch, "preprocess")
    prepared = []

    def recording(*args, **kwargs):
        prepared.append(module_prepare(*args, **kwargs))
        return prepared[-1]

    module_prepare = module.prepare_image
    monkeypatch.setattr(module, "prepare_image", recording)
    model = module.TritonPythonModel()
    model.initialize(model_args(tc.preprocess_config(settings(pixel_type="uint8", decode_threads=1)), tmp_path))
    assert len(prepared) == 1
    pixels, letterbox = prepared[0]
    assert pixels.shape == (3, 256, 256) and pixels.dtype == np.uint8 and len(letterbox) == 5


def test_naive_repository_has_no_dynamic_batching(tmp_path):
    """make bench-serving's naive baseline: every request runs alone (no dynamic_batching block)."""
    naive = settings(dynamic_batching=False)
    for config in tc.all_configs(naive)[:3]:
        assert not config.HasField("dynamic_batching"), config.name
        path = tc.write_config(config, tmp_path / config.name)
        assert not tc.read_config(path).HasField("dynamic_batching")
    assert all(c.HasField("dynamic_batching") for c in tc.all_configs(settings())[:3])


@pytest.mark.parametrize("target, expected", [("local", "uint8"), ("onnxruntime", "uint8"), ("tensorrt", "float32")])
def test_pixels_cross_the_ensemble_as_bytes_for_onnx_targets(target, expected):
    """preprocess emits what the detector declares: uint8 for ONNX targets (the builder adds the
    scaling to the graph), float32 for a TensorRT plan served as built."""
    from types import SimpleNamespace

    from tools.build_repo import settings_for

    info = SimpleNamespace(image_size=(256, 256), num_classes=4, head_layout="raw", strides=(8, 16, 32), reg_max=16)
    s = settings_for(info, target=target)
    assert s.pixel_type == expected
    pixels = next(o for o in tc.preprocess_config(s).output if o.name == "PIXELS")
    images = tc.detector_config(s).input[0]
    assert pixels.data_type == images.data_type == (tc.mc.TYPE_UINT8 if expected == "uint8" else tc.mc.TYPE_FP32)
    assert tc.preprocess_config(s).parameters["pixel_type"].string_value == expected
    assert settings_for(info, target=target, pixel_type="float32").pixel_type == "float32"


def test_uint8_input_graph_gives_the_float_graph_results(tmp_path):
    """with_uint8_pixels: Cast + Div by 255 in front of the graph; outputs bit-identical to
    feeding letterbox's float pixels; metadata kept; a second wrap is refused."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from compress.errors import UnsupportedModelError
    from compress.export import with_uint8_pixels

    weights = np.random.default_rng(0).normal(size=(8, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w"], ["features"], pads=[1, 1, 1, 1]),
         helper.make_node("Sigmoid", ["features"], ["class_logits"])], "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("class_logits", TensorProto.FLOAT, ["batch", 8, 32, 32])],
        [helper.make_tensor("w", TensorProto.FLOAT, weights.shape, weights.ravel())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    model.metadata_props.add(key="imgsz", value="[32, 32]")
    onnx.save(model, tmp_path / "float.onnx")
    with_uint8_pixels(tmp_path / "float.onnx", tmp_path / "uint8.onnx")
    wrapped = onnx.load(tmp_path / "uint8.onnx")
    assert wrapped.graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8
    assert {p.key: p.value for p in wrapped.metadata_props} == {"imgsz": "[32, 32]"}
    pixels = np.random.default_rng(1).integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
    (expected,) = ort.InferenceSession(tmp_path / "float.onnx").run(None, {"images": pixels.astype(np.float32) / 255.0})
    (got,) = ort.InferenceSession(tmp_path / "uint8.onnx").run(None, {"images": pixels})
    np.testing.assert_array_equal(got, expected)
    with pytest.raises(UnsupportedModelError, match="already takes uint8"):
        with_uint8_pixels(tmp_path / "uint8.onnx", tmp_path / "twice.onnx")


def test_the_local_detector_is_told_its_runtime_and_file():
    ort = tc.detector_config(settings())
    assert (ort.parameters["runtime"].string_value, ort.parameters["model_file"].string_value) == ("onnxruntime",
                                                                                                   "model.onnx")
    openvino = tc.detector_config(settings(runtime="openvino", openvino_precision="f32"))
    assert openvino.backend == "python"
    assert (openvino.parameters["runtime"].string_value, openvino.parameters["model_file"].string_value,
            openvino.parameters["openvino_precision"].string_value) == ("openvino", "model.xml", "f32")
    assert settings(target="tensorrt", pixel_type="float32").detector_file_name == "model.plan"


def test_the_openvino_target_is_the_images_openvino_backend_on_the_twin(tmp_path):
    s = settings(target="openvino", detector_instances=2)
    assert s.runtime == "openvino" and s.detector_file_name == "model.xml"  # the backend serves an IR only
    config = tc.read_config(tc.write_config(tc.detector_config(s), tmp_path / "detector"))
    assert config.backend == "openvino" and not config.platform
    assert config.default_model_filename == "model.xml"
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, config.instance_group[0].KIND_CPU)]
    # the backend compiles once for every instance, at batch max_batch_size: a stream per instance, smaller
    # batches padded (refused otherwise); threads: the backend's default
    assert {k: v.string_value for k, v in config.parameters.items()} == {"NUM_STREAMS": "2",
                                                                        "ENABLE_BATCH_PADDING": "YES"}
    assert config.input[0].data_type == tc.mc.TYPE_UINT8  # the twin scales uint8 pixels itself
    threads = tc.detector_config(settings(target="openvino", ort_threads=3))
    assert threads.parameters["INFERENCE_NUM_THREADS"].string_value == "3"
    with pytest.raises(tc.ConfigError, match="on the CPU"):
        settings(target="openvino", device="gpu")


def _float_ir(tmp_path):
    """A two-op detector-shaped graph as an OpenVINO IR with Ultralytics-style metadata beside it."""
    import onnx
    import openvino as ov
    from onnx import TensorProto, helper

    weights = np.random.default_rng(0).normal(size=(8, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w"], ["features"], pads=[1, 1, 1, 1]),
         helper.make_node("Sigmoid", ["features"], ["class_logits"])], "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("class_logits", TensorProto.FLOAT, [1, 8, 32, 32])],
        [helper.make_tensor("w", TensorProto.FLOAT, weights.shape, weights.ravel())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, tmp_path / "float.onnx")
    (tmp_path / "ir").mkdir()
    ov.save_model(ov.convert_model(str(tmp_path / "float.onnx")), str(tmp_path / "ir" / "model.xml"),
                  compress_to_fp16=False)
    (tmp_path / "ir" / "metadata.yaml").write_text("imgsz: [32, 32]\n")
    return tmp_path / "ir" / "model.xml"


def test_an_openvino_ir_takes_uint8_pixels_through_its_own_preprocessing(tmp_path):
    """with_uint8_pixels on an IR: OpenVINO's PrePostProcessor converts and scales; outputs equal
    feeding the float pixels; its weights and metadata.yaml travel with it; a second wrap is refused."""
    import openvino as ov

    from compress.errors import UnsupportedModelError
    from compress.export import with_uint8_pixels
    from compress.openvino_session import create_openvino_session

    source = _float_ir(tmp_path)
    served = with_uint8_pixels(source, tmp_path / "served" / "model.xml")
    assert ov.Core().read_model(str(served)).inputs[0].get_element_type() == ov.Type.u8
    assert served.with_suffix(".bin").exists()
    assert (served.parent / "metadata.yaml").read_text() == "imgsz: [32, 32]\n"
    pixels = np.random.default_rng(1).integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
    expected = create_openvino_session(source).run(["class_logits"], {"images": pixels.astype(np.float32) / 255.0})
    got = create_openvino_session(served).run(["class_logits"], {"images": pixels})
    np.testing.assert_allclose(got[0], expected[0], rtol=0, atol=1e-6)
    with pytest.raises(UnsupportedModelError, match="already takes uint8"):
        with_uint8_pixels(served, tmp_path / "twice" / "model.xml")


def test_an_openvino_session_answers_by_the_onnx_output_names_and_compiles_every_batch_ahead(tmp_path):
    from compress.openvino_session import create_openvino_session

    session = create_openvino_session(_float_ir(tmp_path), threads=1)
    session.compile_batches(range(1, 5))
    # one thread, not pinned: two served instances are two processes, which pinning would put on one core
    assert session.describe()["threads"] == 1 and session.describe()["cpu_pinning"] is False
    assert sorted(shape[0] for shape in session._compiled) == [1, 2, 3, 4]
    batch = np.random.default_rng(2).random((3, 3, 32, 32), dtype=np.float32)
    (out,) = session.run(["class_logits"], {"images": batch})
    assert out.shape == (3, 8, 32, 32)
    with pytest.raises(KeyError, match="no output.s. box_logits"):
        session.run(["box_logits"], {"images": batch})


def test_the_copied_openvino_session_works_without_the_project_and_says_what_is_missing(tmp_path, monkeypatch):
    """The builder's copy beside the detector has no `compress` package: its errors still carry a
    hint, and a missing openvino is one readable ImportError."""
    import importlib.util
    import shutil
    import sys

    from tools.build_repo import OPENVINO_SESSION

    copy = tmp_path / "openvino_session.py"
    shutil.copyfile(OPENVINO_SESSION, copy)
    for name in ("compress", "compress.errors"):  # `from compress.errors import ...` raises ImportError
        monkeypatch.setitem(sys.modules, name, None)
    spec = importlib.util.spec_from_file_location("openvino_session_copy", copy)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.MissingDependencyError.__module__ == "openvino_session_copy"  # the fallback, not the project's
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(ImportError, match="OpenVINO is not installed.*make venv"):
        module.create_openvino_session(copy)  # openvino is imported before the file is read
    with pytest.raises(FileNotFoundError, match="OpenVINO model not found"):
        module.require_file(tmp_path / "missing.xml", "OpenVINO model")
