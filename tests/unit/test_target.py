"""The deployment target is an input: the device training runs on, ONNX Runtime's providers, the
threads latency is measured at, the CPU's extensions, the detector instances' kind, the TensorRT
profile's max batch. The CPU default stays what it is on this kind of machine."""

from __future__ import annotations

import json

import pytest

from compress import env
from compress.errors import MissingDependencyError, ToolkitError
from compress.onnx_session import execution_providers
from tools import triton_config as tc

SAPPHIRE_RAPIDS = ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
                   "flags\t\t: fpu sse avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8\n")
EPYC = "processor\t: 0\nmodel name\t: AMD EPYC 9654\nflags\t\t: fpu avx2 avx512f avx512_vnni avx_vnni\n"


def test_the_machine_line_names_amx_where_the_cpu_has_it():
    machine = env.describe_machine(SAPPHIRE_RAPIDS)
    assert machine["cpu"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert machine["vector_extensions"] == ["AVX2", "AVX-512", "AVX-512 VNNI", "AVX-512 BF16", "AMX", "AMX-INT8",
                                            "AMX-BF16"]
    assert "AMX-INT8" in env.machine_line(machine)
    epyc = env.describe_machine(EPYC)
    assert not any(name.startswith("AMX") for name in epyc["vector_extensions"])  # the text alone decides
    assert "AVX-VNNI" in epyc["vector_extensions"]


def test_the_machine_line_names_an_accelerated_onnx_runtime():
    machine = {"cpu": "x", "cores": 8, "vector_extensions": ["AVX2"], "onnxruntime": "1.31.1",
               "onnxruntime_providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
    assert env.machine_line(machine).endswith("ONNX Runtime 1.31.1 with CUDA.")
    assert env.machine_line({**machine, "onnxruntime_providers": ["CPUExecutionProvider"]}).endswith("1.31.1.")


def test_training_runs_where_asked_and_on_the_cpu_without_a_gpu():
    import torch

    assert env.training_device("cpu") == "cpu"
    if torch.cuda.is_available():
        assert env.training_device(None) == "0" and env.training_device("gpu") == "0"
        return
    assert env.training_device(None) == "cpu"  # the CPU default, unchanged
    with pytest.raises(MissingDependencyError, match="torch sees none"):
        env.training_device("gpu")
    with pytest.raises(ToolkitError, match="not cpu, gpu or a CUDA device index"):
        env.training_device("tpu")


def test_onnx_runtime_providers_follow_the_build_and_the_request(monkeypatch):
    import onnxruntime as ort

    monkeypatch.delenv("ORT_PROVIDERS", raising=False)
    available = ort.get_available_providers()
    expected = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    assert execution_providers() == expected
    assert execution_providers("cpu") == ["CPUExecutionProvider"]
    monkeypatch.setenv("ORT_PROVIDERS", "cpu")
    assert execution_providers() == ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in available:
        with pytest.raises(ValueError, match="CUDAExecutionProvider not available here"):
            execution_providers("cuda,cpu")


def test_latency_is_measured_at_a_served_instance_share_of_the_cores():
    from compress.defaults import DEFAULT_DETECTOR_INSTANCES
    from compress.detection import usable_cores
    from compress.pipeline import PROFILES, Context

    expected = max(1, usable_cores() // DEFAULT_DETECTOR_INSTANCES)  # as each served detector instance gets it
    assert env.serving_threads() == expected
    assert Context("artifacts", PROFILES["tiny"]).latency_threads() == expected
    assert Context("artifacts", PROFILES["tiny"], threads=6).latency_threads() == 6


@pytest.mark.parametrize("target", ["local", "onnxruntime"])
def test_gpu_detector_instances_where_the_device_is_gpu(target):
    settings = tc.RepositorySettings(image_size=(128, 128), num_classes=4, target=target, device="gpu")
    config = tc.detector_config(settings)
    assert [g.kind for g in config.instance_group] == [tc.mc.ModelInstanceGroup.KIND_GPU]
    cpu = tc.detector_config(tc.RepositorySettings(image_size=(128, 128), num_classes=4, target=target))
    assert [g.kind for g in cpu.instance_group] == [tc.mc.ModelInstanceGroup.KIND_CPU]
    if target == "local":  # the Python-backend detector runs ONNX Runtime's CUDA provider on a GPU instance
        assert config.parameters["providers"].string_value == "cuda,cpu"
        assert cpu.parameters["providers"].string_value == "cpu"


def test_the_tensorrt_profile_must_cover_the_repository_max_batch(tmp_path):
    from compress.manifest import Manifest
    from tools.build_repo import _plan_file

    artifacts = tmp_path / "artifacts"
    plan = artifacts / "plan" / "int8.plan"
    plan.parent.mkdir(parents=True)
    plan.write_bytes(b"engine")
    manifest = Manifest(artifacts)
    manifest.record("plan", {"served": "x"}, {"max_batch": 16}, {"int8_plan": plan}, {}, 0.0)
    assert _plan_file(manifest, "int8", 16) == plan
    with pytest.raises(tc.ConfigError, match="stops at batch 16, the repository's max batch is 32") as error:
        _plan_file(manifest, "int8", 32)
    assert "MAX_BATCH=32" in str(error.value)
    assert json.loads((artifacts / "manifest.json").read_text())["stages"]["plan"]["settings"]["max_batch"] == 16
