"""Triton configs: protobuf messages that round-trip through config.pbtxt and wire up correctly."""

from __future__ import annotations

import pytest

from tools import triton_config as tc


def settings(**kwargs) -> tc.RepositorySettings:
    return tc.RepositorySettings(image_size=(256, 256), num_classes=4, **kwargs)


@pytest.mark.parametrize("target", tc.TARGETS)
@pytest.mark.parametrize("layout", tc.HEAD_LAYOUTS)
def test_configs_round_trip(tmp_path, target, layout):
    for config in tc.all_configs(settings(target=target, head_layout=layout)):
        path = tc.write_config(config, tmp_path / config.name)
        assert tc.read_config(path) == config


def test_detector_config_per_target():
    local = tc.detector_config(settings(target="local", detector_instances=2, queue_delay_us=500))
    assert local.backend == "python" and local.instance_group[0].count == 2
    assert local.dynamic_batching.max_queue_delay_microseconds == 500
    assert list(local.dynamic_batching.preferred_batch_size) == [4, 8]
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


def test_postprocess_thresholds_in_parameters():
    config = tc.postprocess_config(settings(conf_threshold=0.4, iou_threshold=0.6))
    assert config.parameters["conf_threshold"].string_value == "0.4"
    assert config.parameters["iou_threshold"].string_value == "0.6"


@pytest.mark.parametrize("bad", [
    {"target": "tflite"}, {"max_batch_size": 0}, {"preferred_batch_sizes": [32]}, {"detector_instances": 0},
    {"conf_threshold": 1.5}, {"image_size": (250, 250)}, {"device": "tpu"},
])
def test_invalid_settings_are_rejected(bad):
    kwargs = {"image_size": (256, 256), "num_classes": 4, **bad}
    with pytest.raises(tc.ConfigError):
        tc.RepositorySettings(**kwargs)


def test_build_keeps_tuned_settings_unless_overridden(tmp_path):
    import json
    from argparse import Namespace
    from types import SimpleNamespace

    from tools.build_repo import settings_from_args

    tuned = {"queue_delay_us": 8000, "preferred_batch_sizes": [4], "detector_instances": 2,
             "preprocess_instances": 2, "postprocess_instances": 3}
    (tmp_path / "repository.json").write_text(json.dumps({"target": "local", "tuned": {"streams": 8},
                                                          "settings": {**tuned, "image_size": [256, 256]}}))
    info = SimpleNamespace(image_size=(256, 256), num_classes=4, head_layout="raw")
    args = Namespace(repo=tmp_path, target="local", detector_instances=1)
    settings = settings_from_args(args, info)
    assert settings.detector_instances == 1  # the explicit override wins
    assert (settings.queue_delay_us, settings.postprocess_instances, settings.preferred_batch_sizes) == (8000, 3, [4])
    args_other_target = Namespace(repo=tmp_path, target="onnxruntime")
    assert settings_from_args(args_other_target, info).queue_delay_us == tc.RepositorySettings((256, 256), 4).queue_delay_us
