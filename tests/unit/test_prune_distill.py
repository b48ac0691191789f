"""Pruning hits its MACs target and keeps shapes; pruned models reload; the KD loss learns."""

from __future__ import annotations

import copy

import pytest
import torch

from compress.prune import SplitFreeC2f, count_macs, make_prunable, prune, save_checkpoint

IMGSZ = 128


def detection_model(cfg: str, nc: int = 4):
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    return DetectionModel(cfg, nc=nc, verbose=False).eval()


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolo11n.yaml"])
def test_split_free_swap_keeps_outputs(cfg):
    model = detection_model(cfg)
    x = torch.rand(2, 3, IMGSZ, IMGSZ)
    with torch.no_grad():
        before = model(x)[0]
        make_prunable(model)
        after = model(x)[0]
    assert any(isinstance(m, SplitFreeC2f) for m in model.modules())
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("cfg,target", [("yolov8n.yaml", 2.0), ("yolo11n.yaml", 1.8)])
@pytest.mark.parametrize("importance", ["magnitude", "bn_scale"])
def test_prune_hits_macs_target_and_keeps_shapes(cfg, target, importance):
    model = detection_model(cfg)
    # A fresh model's BN gammas are all 1 (no ranking for bn_scale): give them trained-like spread.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.weight.data.uniform_(0.1, 1.5)
    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    with torch.no_grad():
        reference = model(x)[0].shape
    base_macs, _ = count_macs(copy.deepcopy(model), IMGSZ)
    result = prune(model, IMGSZ, target, importance=importance, steps=2)
    macs, params = count_macs(model, IMGSZ)
    assert base_macs / macs == pytest.approx(target, rel=0.10)
    assert result.macs_reduction == pytest.approx(base_macs / macs)
    assert params < result.base_params
    with torch.no_grad():
        assert model(x)[0].shape == reference
    # channels stay multiples of 8 wherever pruning touched them (the head's outputs are fixed)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups == 1 and m.out_channels > 16]
    assert sum(c.out_channels % 8 == 0 for c in convs) / len(convs) > 0.9


def test_pruned_checkpoint_reloads(tmp_path):
    from ultralytics import YOLO

    model = detection_model("yolov8n.yaml")
    prune(model, IMGSZ, 2.0)
    path = save_checkpoint(model, tmp_path / "pruned.pt", {"imgsz": IMGSZ, "task": "detect"})
    reloaded = YOLO(str(path)).model.eval()
    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x)[0], model.eval()(x)[0], rtol=1e-4, atol=1e-3)
    assert sum(p.numel() for p in reloaded.parameters()) == sum(p.numel() for p in model.parameters())


def test_unreachable_target_is_a_clear_error():
    from compress.errors import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="> 1"):
        prune(detection_model("yolov8n.yaml"), IMGSZ, 0.5)


def test_distillation_loss_is_finite_and_falls():
    """A few optimizer steps on one batch: the KD terms are finite and the total loss falls."""
    from types import SimpleNamespace

    from ultralytics.cfg import get_cfg

    from compress.distill import DistillSettings, attach_distillation

    teacher = detection_model("yolov8n.yaml")
    student = detection_model("yolov8n.yaml")
    prune(student, IMGSZ, 2.0)
    for model in (teacher, student):
        model.args = SimpleNamespace(**vars(get_cfg()))
    criterion = attach_distillation(student, teacher, DistillSettings(feature_weight=1.0))
    assert len(student.kd_adapters) == 3  # one projection per neck level, student -> teacher width
    student.train()
    for param in student.parameters():
        param.requires_grad_(True)
    # 1e-4: with 1e-3 the task-aligned assigner makes the first steps' loss jump about (measured)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-4)
    torch.manual_seed(0)
    batch = {
        "img": torch.rand(2, 3, IMGSZ, IMGSZ),
        "batch_idx": torch.tensor([0.0, 1.0]),
        "cls": torch.tensor([[1.0], [2.0]]),
        "bboxes": torch.tensor([[0.5, 0.5, 0.3, 0.3], [0.3, 0.6, 0.2, 0.25]]),
    }
    losses = []
    for _ in range(10):
        optimizer.zero_grad()
        loss, _items = student.loss(batch)
        loss.sum().backward()
        optimizer.step()
        losses.append(float(loss.sum().detach()))
        assert all(torch.isfinite(torch.tensor(v)) for v in criterion.last_terms.values())
    assert set(criterion.last_terms) == {"cls_kd", "box_kd", "feat_kd"}
    assert sum(losses[-3:]) / 3 < 0.9 * losses[0], losses


def test_distillation_terms_are_nonzero_and_reach_the_adapters():
    """The KD terms are really in the loss: each is non-zero, the total exceeds the plain detection
    loss, and the gradient reaches the adapters (only the feature term depends on them)."""
    import copy
    from types import SimpleNamespace

    from ultralytics.cfg import get_cfg

    from compress.distill import DistillSettings, attach_distillation

    torch.manual_seed(0)
    teacher, student = detection_model("yolov8n.yaml"), detection_model("yolov8n.yaml")
    prune(student, IMGSZ, 2.0)
    for model in (teacher, student):
        model.args = SimpleNamespace(**vars(get_cfg()))
    criterion = attach_distillation(student, teacher, DistillSettings(feature_weight=1.0))
    student.train()
    for param in student.parameters():
        param.requires_grad_(True)
    batch = {"img": torch.rand(2, 3, IMGSZ, IMGSZ), "batch_idx": torch.tensor([0.0, 1.0]),
             "cls": torch.tensor([[1.0], [2.0]]),
             "bboxes": torch.tensor([[0.5, 0.5, 0.3, 0.3], [0.3, 0.6, 0.2, 0.25]])}
    twin = copy.deepcopy(student)
    loss, _ = student.loss(batch)
    loss.sum().backward()
    assert set(criterion.last_terms) == {"cls_kd", "box_kd", "feat_kd"}
    assert all(value > 1e-6 for value in criterion.last_terms.values()), criterion.last_terms
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.kd_adapters.parameters())
    plain, _ = criterion.base(twin(batch["img"]), batch)  # same weights, no KD
    assert float(loss.sum()) > float(plain.sum()) + 1e-4
    # the feature term off (the pipeline's default): not computed, the adapters get nothing, and
    # the logit terms still are in the loss
    twin_criterion = attach_distillation(twin, teacher, DistillSettings(feature_weight=0.0))
    twin.zero_grad()
    twin_loss, _ = twin.loss(batch)
    twin_loss.sum().backward()
    assert set(twin_criterion.last_terms) == {"cls_kd", "box_kd"}
    assert all(value > 1e-6 for value in twin_criterion.last_terms.values()), twin_criterion.last_terms
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in twin.kd_adapters.parameters())
    assert float(twin_loss.sum()) > float(plain.sum()) + 1e-4
    fresh = copy.deepcopy(student)
    del fresh.kd_adapters
    attach_distillation(fresh, teacher, DistillSettings(feature_weight=0.0))
    assert not hasattr(fresh, "kd_adapters")  # no projections made (or exported) for an unused term


def test_feature_distillation_weight_reaches_every_candidate_and_its_cache_key(tmp_path):
    """KD_FEATURE_WEIGHT= is part of every trained candidate's cache key and of the search stage's
    settings (changing it trains the students again), not of the equal-budget baseline or of the
    untrained INT8 candidate."""
    from dataclasses import replace

    from compress.budget import Reference
    from compress.candidates import CandidateSpec, CandidateStore
    from compress.distill import DistillSettings
    from compress.manifest import Manifest
    from compress.pipeline import FINETUNE, PROFILES, SEARCH, Context

    for name in ("baseline.pt", "finetuned.pt", "finetuned.onnx"):
        (tmp_path / name).write_bytes(name.encode())
    manifest = Manifest(tmp_path)
    manifest.record("dataset", {}, {}, {}, {"content_hash": "0123456789abcdef"}, 0.0)
    manifest.record("baseline", {}, {"imgsz": 256}, {"weights": tmp_path / "baseline.pt"}, {}, 0.0)
    manifest.record("finetune", {}, {}, {"onnx": tmp_path / "finetuned.onnx", "weights": tmp_path / "finetuned.pt"}, {}, 0.0)
    default = Context(tmp_path, PROFILES["default"])
    weighted = Context(tmp_path, replace(PROFILES["default"], kd_feature_weight=0.5))
    assert DistillSettings().feature_weight == PROFILES["default"].kd_feature_weight == 0.0  # one default
    student, untrained = CandidateSpec("relu", 2.0), CandidateSpec("silu", 1.0, trained=False)
    reference = Reference("finetune", 0.6, 0.5)
    assert CandidateStore(weighted, reference).key(student)["kd"]["feature_weight"] == 0.5
    assert CandidateStore(default, reference).key(student) != CandidateStore(weighted, reference).key(student)
    assert CandidateStore(default, reference).key(untrained) == CandidateStore(weighted, reference).key(untrained)
    assert SEARCH.settings(default) != SEARCH.settings(weighted)
    assert FINETUNE.settings(default) == FINETUNE.settings(weighted)
