"""The whole compression chain on the tiny profile, the report, and the served INT8 model."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch

from compress.manifest import Manifest
from compress.quantize import qdq_summary
from compress.report import CONVERGED_BASELINE_POINTS
from tests.conftest import copy_committed_repository

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _search(artifacts: Path) -> dict:
    return Manifest(artifacts).get("search").metrics


def test_every_stage_recorded_with_outputs(tiny_artifacts):
    from compress import yolo

    manifest = Manifest(tiny_artifacts)
    for stage in ("dataset", "baseline", "export", "finetune", "search", "report", "plan"):
        assert manifest.get(stage) is not None, f"stage {stage} missing from the manifest"
    search = _search(tiny_artifacts)
    for name, info in search["candidates"].items():
        if not info["trained"]:
            continue
        # the distilled student kept the pruned architecture (the trainer trap would restore the full width)
        arch = json.loads((tiny_artifacts / "search" / name / "arch" / "architecture.json").read_text())["metrics"]
        trained = sum(p.numel() for p in yolo.load(manifest.output("search", f"{name}_weights")).model.parameters())
        assert trained == arch["params"] == info["params"]
        assert info["distill_epochs"] == manifest.get("finetune").settings["epochs"]
    for name, arch in search["architectures"].items():  # every depth's pruning target is a floor, reached closely
        depth = next(p["depth"] for p in search["probes"] if p["name"] == name)
        if depth > 1:
            assert depth <= arch["macs_reduction"] <= depth * 1.1
        else:  # unpruned: the activation swap moves the count by a fraction of a percent
            assert arch["macs_reduction"] == pytest.approx(1.0, abs=0.01)
    assert any(arch["macs_reduction"] >= 2.0 for arch in search["architectures"].values())
    # the equal-budget baseline is the unpruned model trained further, not a copy of it
    baseline = yolo.load(manifest.output("baseline", "weights")).model
    finetuned = yolo.load(manifest.output("finetune", "weights")).model
    assert sum(p.numel() for p in finetuned.parameters()) == sum(p.numel() for p in baseline.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(finetuned.state_dict().values(), baseline.state_dict().values()))
    # the tiny search stays within its time limit (it bounds the suite's training time in CI)
    assert search["seconds_spent"] <= search["seconds_limit"] + 120


def test_rerunning_the_pipeline_never_points_the_server_at_a_model(tiny_artifacts):
    from compress.pipeline import PROFILES, Context, run_stages

    served = tiny_artifacts / "served.json"
    saved = served.read_text() if served.exists() else None
    served.unlink(missing_ok=True)
    try:
        run_stages(Context(tiny_artifacts, PROFILES["tiny"]))  # everything up to date: reused
        assert not served.exists(), "only the parity gate may write served.json"
    finally:
        if saved is not None:
            served.write_text(saved)


def test_manifest_records_what_the_run_used(tiny_artifacts):
    manifest = Manifest(tiny_artifacts)
    export = manifest.get("export").metrics
    model = onnx.load(str(manifest.output("export", "onnx")))
    assert export["opset"] == next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert export["batch_dim"] == model.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    for name, info in _search(tiny_artifacts)["candidates"].items():
        quant = info["quantization"]
        assert quant["calibration_images"] == 16 and 16 % quant["calibration_batch"] == 0
        assert set(quant["float_nodes"]) == set(qdq_summary(manifest.output("search", f"{name}_int8"))["float_convs"])
    dataset = manifest.get("dataset")
    assert dataset.metrics["train_images"] == 160 and len(dataset.metrics["content_hash"]) == 16


def test_report_serves_the_fastest_measured_row_within_the_budget(tiny_artifacts):
    report = json.loads((tiny_artifacts / "report" / "report.json").read_text())
    search = _search(tiny_artifacts)
    keys = [r["key"] for r in report["rows"]]
    assert keys[:2] == ["baseline", "equal_budget"]
    for name, info in search["candidates"].items():  # every measured candidate is a row (its FP32 twin too)
        assert f"{name}:int8" in keys and (f"{name}:fp32" in keys) == info["trained"]
    for row in report["rows"]:
        for key in ("params", "gmacs", "file_mb", "bs1_ms", "bs8_ms"):
            assert row[key] > 0, f"{row['key']}: {key} = {row[key]}"
        assert 0 <= row["map50_95"] <= row["map50"] <= 1
    rows = {r["key"]: r for r in report["rows"]}
    fair = max(rows["equal_budget"], rows["baseline"], key=lambda r: r["map50_95"])
    budget = report["served"]["budget_points"]
    assert budget == 1.0  # the tiny profile's default budget
    servable = [r for r in report["rows"] if r["precision"] == "int8" or r["candidate"] is None]
    within = [r for r in servable if round((fair["map50_95"] - r["map50_95"]) * 100, 2) <= budget]
    served = next(r for r in report["rows"] if r["served"])
    # never over the budget, and nothing measured within it is faster
    assert served in within and served["bs1_ms"] == min(r["bs1_ms"] for r in within)
    assert report["served"]["onnx"] == served["onnx"] and report["served"]["within_budget"]
    assert report["targets"]["measured"]["map_drop_points"] == round((fair["map50_95"] - served["map50_95"]) * 100, 2)
    # the headline speed-up is the ratio of the rows' own latencies (fastest deciles)
    spread = report["targets"]["speedup_spread"]["speedup_bs1"]
    assert spread["estimate"] == pytest.approx(rows["baseline"]["bs1_ms"] / served["bs1_ms"], rel=2e-3)
    # the budget table applies the same rule at each budget: never over it, larger budgets never slower
    table = report["budget_table"]
    assert [t["budget_points"] for t in table] == [0.5, 1.0, 2.0, 3.0, 5.0]
    assert all(t["drop_points"] <= t["budget_points"] for t in table)
    assert all(a["speedup_bs1"] <= b["speedup_bs1"] + 1e-9 or a["model"] == b["model"] for a, b in zip(table, table[1:]))
    # the machine the speed-ups belong to is named
    assert report["machine"]["cpu"] and report["machine"]["cores"] >= 1
    markdown = (tiny_artifacts / "report" / "report.md").read_text()
    for row in report["rows"]:
        assert row["model"] in markdown
    for probe in search["probes"]:
        assert probe["name"] in markdown and probe["status"] in markdown
    assert report["machine"]["cpu"] in markdown and "Budget table" in markdown
    # a reference the extra epochs still improve is called out loudly
    gain = round((rows["equal_budget"]["map50_95"] - rows["baseline"]["map50_95"]) * 100, 2)
    assert report["targets"]["baseline_gain_from_extra_epochs_points"] == gain
    assert ("Weak reference" in markdown) == (report["weak_reference"] is not None)
    if gain > max(budget, CONVERGED_BASELINE_POINTS):
        assert "still learning" in report["weak_reference"]
    for plot in ("accuracy_vs_latency.png", "op_profile.png"):
        assert (tiny_artifacts / "report" / plot).stat().st_size > 10_000


def test_relu_student_has_no_silu_left_and_int8_folds_its_activations(tiny_artifacts):
    """A ReLU candidate: every SiLU swapped before distillation, none in the exported graph, and
    ONNX Runtime's INT8 graph runs no Sigmoid/Mul for it."""
    from compress.profile import profile_model

    manifest = Manifest(tiny_artifacts)
    name, info = next((n, i) for n, i in _search(tiny_artifacts)["candidates"].items() if i["activation"] == "relu")
    assert info["swapped_activations"] > 20
    ops = {n.op_type for n in onnx.load(str(manifest.output("search", f"{name}_fp32"))).graph.node}
    assert "Sigmoid" not in ops and "Relu" in ops
    relu = profile_model(manifest.output("search", f"{name}_int8"), (128, 128), 1)
    silu = profile_model(manifest.output("search", "int8_reference_int8"), (128, 128), 1)
    assert not {"Sigmoid", "QLinearSigmoid"} & set(relu) and {"Sigmoid", "QLinearSigmoid"} & set(silu)


def test_int8_has_qdq_around_convs_except_float_kept(tiny_artifacts, tmp_path):
    from compress.quantize import quantize

    manifest = Manifest(tiny_artifacts)
    int8 = manifest.output("search", "int8_reference_int8")
    summary = qdq_summary(int8)
    kept = set(_search(tiny_artifacts)["candidates"]["int8_reference"]["quantization"]["float_nodes"])
    assert set(summary["float_convs"]) == kept
    assert len(summary["quantized_convs"]) > 5 * len(kept)
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # the TensorRT flavour (what the plan stage builds from) is symmetric: every activation zero point is 0 and signed
    trt_onnx = tmp_path / "int8_trt.onnx"
    quantize(manifest.output("finetune", "onnx"), trt_onnx, manifest.output("dataset", "data_yaml"), (128, 128),
             calibration_count=8, activation="int8")
    trt = onnx.load(str(trt_onnx))
    inits = {i.name: i for i in trt.graph.initializer}
    zero_points = [inits[n.input[2]] for n in trt.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert zero_points and all(onnx.numpy_helper.to_array(z).dtype.name == "int8" for z in zero_points)
    assert all(not onnx.numpy_helper.to_array(z).any() for z in zero_points)


def test_served_int8_equals_in_process(tiny_artifacts, tmp_path, val_images, photos):
    from compress.export import read_info
    from compress.local_detector import LocalDetector
    from tools import build_repo
    from tools.client import TritonDetectorClient
    from tools.server import TritonServer

    int8 = Manifest(tiny_artifacts).output("search", "int8_reference_int8")
    info = read_info(int8)
    assert info.head_layout == "raw"
    repo = copy_committed_repository(tmp_path / "repo")
    settings = build_repo.settings_for(info, conf_threshold=0.01)
    build_repo.build(repo, int8, settings, {"stage": "int8_reference", "target": "local"})
    payloads = [p.read_bytes() for p in val_images[:8] + photos]
    with TritonServer(repo, log_path=tmp_path / "server.log") as server:
        with TritonDetectorClient(server.grpc_url, "grpc") as client:
            served = client.detect(payloads)
    local = LocalDetector(int8, conf_threshold=0.01).detect(payloads)
    assert len(served) == len(local) == len(payloads)
    assert sum(len(d) for d in local) > 0
    for s, l in zip(served, local):
        assert len(s) == len(l)
        torch.testing.assert_close(torch.from_numpy(s.boxes), torch.from_numpy(l.boxes), atol=0.05, rtol=0)
        torch.testing.assert_close(torch.from_numpy(s.scores), torch.from_numpy(l.scores), atol=1e-3, rtol=0)
        assert (s.classes == l.classes).all()


def test_a_second_budget_reuses_the_trained_candidates(tiny_artifacts, tmp_path):
    """`make MAX_MAP_DROP=...` after `make`: the search runs again for the new budget, and every
    candidate it needs that was trained before is reused, not trained again."""
    import shutil
    from dataclasses import replace

    from compress.pipeline import PROFILES, Context, run_stages

    artifacts = tmp_path / "artifacts"
    shutil.copytree(tiny_artifacts, artifacts)
    first = Context(artifacts, replace(PROFILES["tiny"], max_map_drop=100.0))  # everything fits: trains the fastest
    run_stages(first, ["search"])
    trained = {name: (artifacts / "search" / name / "candidate.json").stat().st_mtime_ns
               for name in _search(artifacts)["candidates"]}
    second = Context(artifacts, replace(PROFILES["tiny"], max_map_drop=0.0))
    run_stages(second, ["search"])
    search = _search(artifacts)
    assert search["budget_points"] == 0.0
    students = {name: info for name, info in search["candidates"].items() if info["trained"]}
    assert students and all(info["reused"] for info in students.values())
    for name in students:
        assert (artifacts / "search" / name / "candidate.json").stat().st_mtime_ns == trained[name]


@pytest.mark.parametrize("cfg", ["trained yolov8n", "yolov8n.yaml", "yolo11n.yaml"])
def test_user_weights_go_through_prune_export_quantize(cfg, tiny_artifacts, tmp_path):
    """User weights of either family (trained: the tiny run's baseline; or built from their yaml,
    saved as a checkpoint) compress and run: the pruned network's ONNX computes what its torch
    module does, and its INT8 approximates that (for trained weights: an untrained network's
    outputs are near constant, nothing to approximate)."""
    import numpy as np
    from ultralytics.nn.tasks import DetectionModel

    from compress import yolo
    from compress.export import export_raw_onnx, read_info
    from compress.onnx_session import create_session
    from compress.pipeline import PROFILES, Context, run_stages
    from compress.prune import make_prunable, prune, save_checkpoint
    from compress.quantize import quantize

    trained = cfg.startswith("trained")
    if trained:
        model = make_prunable(yolo.load(Manifest(tiny_artifacts).output("baseline", "weights")).model).eval()
    else:
        model = DetectionModel(cfg, nc=4, verbose=False)
        model.names = {0: "circle", 1: "square", 2: "triangle", 3: "cross"}
    user = save_checkpoint(model, tmp_path / "user.pt", {"imgsz": 128, "task": "detect"})
    data = Manifest(tiny_artifacts).output("dataset", "data_yaml")
    # WEIGHTS= / DATA= through the pipeline: evaluated as the baseline, exported with provenance
    # untrained weights score 0: past the useless-baseline floor on purpose, to test the plumbing
    ctx = Context(tmp_path / "artifacts", PROFILES["tiny"], data=data, weights=user, allow_weak_baseline=True)
    run_stages(ctx, ["dataset", "baseline", "export"])
    assert read_info(ctx.manifest.output("export", "onnx")).metadata["toolkit_stage"] == "baseline"
    params_before = sum(p.numel() for p in model.parameters())
    result = prune(model, 128, 1.8)
    assert sum(p.numel() for p in model.parameters()) < params_before and result.macs_reduction >= 1.5
    pruned = save_checkpoint(model, tmp_path / "pruned.pt", {"imgsz": 128, "task": "detect"})
    fp32 = export_raw_onnx(pruned, tmp_path / "pruned.onnx", 128, {"toolkit_stage": "prune"})
    int8 = tmp_path / "int8.onnx"
    quantize(fp32, int8, data, (128, 128), calibration_count=8)
    from compress.detection import prepare_image
    from compress.evaluate import val_split
    from compress.export import raw_head_module

    images = np.stack([prepare_image(item.path.read_bytes(), (128, 128))[0] for item in val_split(data, 4)])
    boxes, scores = create_session(int8).run(None, {"images": images})
    assert boxes.shape == (4, 64, 336) and scores.shape == (4, 4, 336)
    # the ONNX is the pruned network: it computes what the pruned torch module computes ...
    with torch.no_grad():
        torch_boxes, torch_scores = (t.numpy() for t in raw_head_module(pruned)(torch.from_numpy(images)))
    fp32_boxes, fp32_scores = create_session(fp32).run(None, {"images": images})
    np.testing.assert_allclose(fp32_boxes, torch_boxes, atol=1e-3, rtol=1e-3)
    np.testing.assert_allclose(fp32_scores, torch_scores, atol=1e-3, rtol=1e-3)
    if not trained:
        return
    # ... and its INT8 approximates it: the quantization error is a small part of what the outputs vary by
    for quantized, reference in ((boxes, fp32_boxes), (scores, fp32_scores)):
        error = np.abs(quantized - reference).mean()
        assert error < 0.25 * np.abs(reference - reference.mean()).mean(), error
    assert np.corrcoef(boxes.ravel(), fp32_boxes.ravel())[0, 1] > 0.95
