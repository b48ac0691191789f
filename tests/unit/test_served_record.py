"""Only a gated model is served: the record ties it to its bytes, and a weak baseline stops the run."""

from __future__ import annotations

import json

import pytest

from compress.errors import GateFailedError, InputFileError, MissingDependencyError, WeakBaselineError
from compress.manifest import Manifest
from compress.pipeline import PROFILES, Context, check_baseline
from compress.records import GatedModel, Report, SearchRecord
from tools.build_repo import served_model

record_served = GatedModel.record


def served_entry(name: str = "quantize", onnx: str = "quantize/int8.onnx") -> dict:
    """report.json's `served`, as the report writes it."""
    return {"name": name, "key": f"{name}:int8", "model": f"{name}, INT8", "precision": "int8", "onnx": onnx,
            "fp32_onnx": onnx, "weights": onnx, "quantization": None, "rule": "the fastest", "budget_points": 1.0,
            "allow_over_budget": False, "drop_points": 0.1, "within_budget": True}


def fake_artifacts(tmp_path, with_plan_from: str | None = None):
    """A manifest with quantize outputs (and a plan record built from `with_plan_from`'s hash)."""
    artifacts = tmp_path / "artifacts"
    (artifacts / "quantize").mkdir(parents=True)
    int8, trt = artifacts / "quantize" / "int8.onnx", artifacts / "quantize" / "int8_trt.onnx"
    int8.write_bytes(b"int8 model bytes")
    trt.write_bytes(b"int8 trt model bytes")
    manifest = Manifest(artifacts)
    manifest.record("quantize", {}, {}, {"onnx": int8, "trt_onnx": trt}, {}, 0.0)
    (artifacts / "report").mkdir()
    (artifacts / "report" / "report.json").write_text(json.dumps({"served": served_entry()}))
    if with_plan_from is not None:
        (artifacts / "plan").mkdir()
        plan = artifacts / "plan" / "int8.plan"
        plan.write_bytes(b"engine")
        manifest.record("plan", {"served": with_plan_from}, {}, {"int8_plan": plan, "trt_onnx": trt}, {}, 0.0)
    return artifacts, int8, trt


def test_nothing_is_served_before_the_gate(tmp_path):
    artifacts, _, _ = fake_artifacts(tmp_path)
    with pytest.raises(GateFailedError, match="has passed the parity gate"):
        served_model(artifacts, None, "local")


def test_the_gated_file_is_served_and_a_changed_one_refused(tmp_path):
    artifacts, int8, trt = fake_artifacts(tmp_path)
    record_served(artifacts, "quantize", int8, trt)
    assert served_model(artifacts, None, "local") == ("quantize", int8.resolve())
    int8.write_bytes(b"re-quantized after the gate")  # e.g. the pipeline re-ran quantize
    with pytest.raises(GateFailedError, match="changed since the parity gate"):
        served_model(artifacts, None, "onnxruntime")


def test_override_serves_ungated_with_a_loud_warning(tmp_path, capsys):
    artifacts, int8, _ = fake_artifacts(tmp_path)
    # the report's choice, unchecked
    assert served_model(artifacts, None, "local", allow_ungated=True) == ("quantize", int8)
    assert "WITHOUT the parity gate" in capsys.readouterr().err
    assert served_model(artifacts, "quantize", "local") == ("quantize", int8)  # STAGE= is an override too
    assert "WITHOUT the parity gate" in capsys.readouterr().err
    # STAGE= also names a search candidate, found by the search's record of it
    entry = SearchRecord.candidate_entry({"trained": True, "label": "ReLU student"}, {"int8": int8, "fp32": int8},
                                         artifacts)
    Manifest(artifacts).record("search", {}, {}, {}, {"reference": {"stage": "finetune", "map50": 0.5, "map50_95": 0.4},
                                                      "budget_points": 1.0, "candidates": {"relu_1.5x": entry}}, 0.0)
    assert served_model(artifacts, "relu_1.5x", "local") == ("relu_1.5x", int8.resolve())


def test_tensorrt_plan_must_come_from_the_gated_model(tmp_path):
    from compress.manifest import file_hash

    artifacts, int8, trt = fake_artifacts(tmp_path, with_plan_from="stale0000000000")
    record_served(artifacts, "quantize", int8, trt)
    with pytest.raises(GateFailedError, match="not built from the model the parity gate passed"):
        served_model(artifacts, None, "tensorrt")
    # built from the bytes the gate passed
    artifacts2, int8_2, trt_2 = fake_artifacts(tmp_path / "two", with_plan_from=file_hash(tmp_path / "artifacts" /
                                                                                          "quantize" / "int8.onnx"))
    record_served(artifacts2, "quantize", int8_2, trt_2)
    assert served_model(artifacts2, None, "tensorrt") == ("plan", artifacts2 / "plan" / "int8.plan")
    # a mixed-precision model chosen by the gate has no TensorRT twin: refused for tensorrt
    record_served(artifacts2, "quantize", int8_2, None, mixed_precision=True)
    with pytest.raises(GateFailedError, match="not built from the model"):
        served_model(artifacts2, None, "tensorrt")


def test_a_gated_model_the_report_no_longer_chooses_is_refused(tmp_path):
    """`make bench` re-measured and the report now serves another candidate: `make repo` refuses
    the stale gate record instead of serving a model the report did not choose."""
    artifacts, int8, trt = fake_artifacts(tmp_path)
    record_served(artifacts, "relu_1.5x", int8, trt)
    with pytest.raises(GateFailedError, match="the report now serves quantize, but the parity gate passed relu_1.5x"):
        served_model(artifacts, None, "local")


def test_tensorrt_without_a_plan_says_so(tmp_path):
    artifacts, int8, trt = fake_artifacts(tmp_path)
    record_served(artifacts, "quantize", int8, trt)
    with pytest.raises(MissingDependencyError, match="no TensorRT plan"):
        served_model(artifacts, None, "tensorrt")


def test_gated_record_holds_the_hash_and_moves_with_the_folder(tmp_path):
    artifacts, int8, trt = fake_artifacts(tmp_path)
    record_served(artifacts, "quantize", int8, trt)
    record = json.loads((artifacts / "served.json").read_text())
    assert record["onnx"] == "quantize/int8.onnx" and len(record["sha256"]) == 16
    moved = artifacts.rename(tmp_path / "elsewhere")  # e.g. a clone in another folder
    assert GatedModel.load(moved).onnx == moved / "quantize" / "int8.onnx"


def test_records_missing_or_corrupt_are_one_error_naming_the_command(tmp_path):
    artifacts, _, _ = fake_artifacts(tmp_path)
    (artifacts / "report" / "report.json").write_text("{ not json")
    with pytest.raises(InputFileError, match="not a readable compression report") as error:
        Report.load(artifacts)
    assert "make pipeline" in str(error.value)
    (artifacts / "report" / "report.json").unlink()
    with pytest.raises(InputFileError, match="report.json is missing"):
        Report.load(artifacts)
    (artifacts / "report" / "report.json").write_text(json.dumps({"served": {"name": "quantize"}}))
    with pytest.raises(InputFileError, match="older version"):  # written before rows had keys
        Report.load(artifacts)
    from tools.repository import RepositoryRecord

    with pytest.raises(InputFileError, match="has not been built") as error:
        RepositoryRecord.load(tmp_path / "no-repo")
    assert "make repo" in str(error.value)
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "repository.json").write_text(json.dumps({"stage": "x"}))
    with pytest.raises(InputFileError, match="not a repository record"):
        RepositoryRecord.load(tmp_path / "repo")


def test_weak_baseline_stops_unless_overridden(tmp_path, capsys):
    ctx = Context(tmp_path, PROFILES["tiny"])
    check_baseline(ctx, {"map50_95": 0.2})
    with pytest.raises(WeakBaselineError) as error:
        check_baseline(ctx, {"map50_95": 0.01})
    assert "below the floor of 0.05" in str(error.value) and "EPOCHS=" in str(error.value)
    assert error.value.exit_code == 3
    ctx.allow_weak_baseline = True
    check_baseline(ctx, {"map50_95": 0.01})
    assert "WARNING" in capsys.readouterr().out


def test_a_model_that_finds_nothing_fails_the_gate_as_itself():
    """No FP32 detection at the deployment threshold: one explicit failing row, no vacuous recall,
    and no claim that keeping layers in float would help."""
    from tools.gate import NO_REFERENCE, Gate, check, quantization_failures

    measured = {"polygraphy": [], "task": {"reference_boxes": 0, "box_recall": 0.0, "score_drift": 0.0,
                                           "class_flips": 0.0},
                "map": {"fp32": 0.5, "int8": 0.5, "reference": 0.5}}
    checks = check(Gate(), measured)
    rows = {name: ok for name, _, _, ok in checks}
    assert rows[NO_REFERENCE] is False and "box recall vs FP32" not in rows
    assert quantization_failures(checks) == []
