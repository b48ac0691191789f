"""The whole compression chain on the tiny profile, the report, and the served INT8 model."""

from __future__ import annotations

import json

import onnx
import pytest
import torch

from compress.manifest import Manifest
from compress.quantize import qdq_summary
from tests.conftest import copy_committed_repository

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_every_stage_recorded_with_outputs(tiny_artifacts):
    manifest = Manifest(tiny_artifacts)
    for stage in ("dataset", "baseline", "export", "prune", "distill", "quantize", "plan", "report"):
        assert manifest.get(stage) is not None, f"stage {stage} missing from the manifest"
    prune = manifest.get("prune").metrics
    assert prune["macs_reduction"] == pytest.approx(2.0, rel=0.10)
    # The distilled student kept the pruned architecture (the trainer trap would restore the full width).
    from compress import yolo

    pruned = sum(p.numel() for p in yolo.load(manifest.output("prune", "weights")).model.parameters())
    distilled = sum(p.numel() for p in yolo.load(manifest.output("distill", "weights")).model.parameters())
    assert distilled == pruned == prune["params"]
    assert json.loads((tiny_artifacts / "served.json").read_text())["stage"] == "quantize"


def test_report_lists_every_stage_with_numbers(tiny_artifacts):
    report = json.loads((tiny_artifacts / "report" / "report.json").read_text())
    assert [r["stage"] for r in report["rows"]] == ["export", "prune", "distill", "quantize"]
    for row in report["rows"]:
        for key in ("params", "gmacs", "file_mb", "bs1_ms", "bs8_ms"):
            assert row[key] > 0, f"{row['stage']}: {key} = {row[key]}"
        assert 0 <= row["map50_95"] <= row["map50"] <= 1
    assert set(report["targets"]["met"]) == {"speedup_bs1", "speedup_bs8", "size_ratio", "map_drop_points"}
    markdown = (tiny_artifacts / "report" / "report.md").read_text()
    for row in report["rows"]:
        assert row["model"] in markdown
    assert (tiny_artifacts / "report" / "accuracy_vs_latency.png").stat().st_size > 10_000


def test_int8_has_qdq_around_convs_except_float_kept(tiny_artifacts):
    manifest = Manifest(tiny_artifacts)
    int8 = manifest.output("quantize", "onnx")
    summary = qdq_summary(int8)
    kept = set(manifest.get("quantize").metrics["float_nodes"])
    assert set(summary["float_convs"]) == kept
    assert len(summary["quantized_convs"]) > 5 * len(kept)
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # the TensorRT variant is symmetric: every activation zero point is 0 and signed
    trt = onnx.load(str(manifest.output("quantize", "trt_onnx")))
    inits = {i.name: i for i in trt.graph.initializer}
    zero_points = [inits[n.input[2]] for n in trt.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert zero_points and all(onnx.numpy_helper.to_array(z).dtype.name == "int8" for z in zero_points)
    assert all(not onnx.numpy_helper.to_array(z).any() for z in zero_points)


def test_served_int8_equals_in_process(tiny_artifacts, tmp_path, val_images, photos):
    from compress.export import read_info
    from tools import build_repo
    from tools.client import LocalDetector, TritonDetectorClient
    from tools.server import TritonServer
    from tools.triton_config import RepositorySettings

    int8 = Manifest(tiny_artifacts).output("quantize", "onnx")
    info = read_info(int8)
    assert info.head_layout == "raw"
    repo = copy_committed_repository(tmp_path / "repo")
    settings = RepositorySettings(image_size=info.image_size, num_classes=info.num_classes, head_layout="raw",
                                  conf_threshold=0.01)
    build_repo.build(repo, int8, settings, {"stage": "quantize", "target": "local"})
    payloads = [p.read_bytes() for p in val_images[:8] + photos]
    with TritonServer(repo, log_path=tmp_path / "server.log") as server:
        with TritonDetectorClient(server.grpc_url, "grpc") as client:
            served = client.detect(payloads)
    local = LocalDetector(int8, conf_threshold=0.01).detect(payloads)
    assert sum(len(d) for d in local) > 0
    for s, l in zip(served, local):
        assert len(s) == len(l)
        torch.testing.assert_close(torch.from_numpy(s.boxes), torch.from_numpy(l.boxes), atol=0.05, rtol=0)
        assert (s.classes == l.classes).all()


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolo11n.yaml"])
def test_user_weights_go_through_prune_export_quantize(cfg, tiny_artifacts, tmp_path):
    """User weights of either family (built from their yaml, saved as a checkpoint) compress and run."""
    import numpy as np
    import onnxruntime as ort
    from ultralytics.nn.tasks import DetectionModel

    from compress.export import export_raw_onnx, read_info
    from compress.pipeline import PROFILES, Context, run_stages
    from compress.prune import prune, save_checkpoint
    from compress.quantize import quantize

    model = DetectionModel(cfg, nc=4, verbose=False)
    model.names = {0: "circle", 1: "square", 2: "triangle", 3: "cross"}
    user = save_checkpoint(model, tmp_path / "user.pt", {"imgsz": 128, "task": "detect"})
    data = Manifest(tiny_artifacts).output("dataset", "data_yaml")
    # WEIGHTS= / DATA= through the pipeline: evaluated as the baseline, exported with provenance
    ctx = Context(tmp_path / "artifacts", PROFILES["tiny"], data=data, weights=user)
    run_stages(ctx, ["dataset", "baseline", "export"])
    assert read_info(ctx.manifest.output("export", "onnx")).metadata["toolkit_stage"] == "baseline"
    prune(model, 128, 1.8)
    pruned = save_checkpoint(model, tmp_path / "pruned.pt", {"imgsz": 128, "task": "detect"})
    fp32 = export_raw_onnx(pruned, tmp_path / "pruned.onnx", 128, {"toolkit_stage": "prune"})
    int8 = tmp_path / "int8.onnx"
    quantize(fp32, int8, data, (128, 128), calibration_count=8)
    session = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    boxes, scores = session.run(None, {"images": np.random.rand(2, 3, 128, 128).astype(np.float32)})
    assert boxes.shape == (2, 64, 336) and scores.shape == (2, 4, 336)
