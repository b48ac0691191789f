"""Distillation: fine-tune a pruned student with the unpruned model as teacher.

Loss = Ultralytics' detection loss (box + cls + DFL)
     + logit distillation on the head: class logits (soft BCE at temperature T) and box
       distributions (KL over the DFL bins, weighted by the teacher's confidence)
     + feature distillation on the three neck outputs through learned 1x1 projections, so it
       works when the pruned student is narrower than the teacher. The pipeline turns this term
       off by default (`Profile.kd_feature_weight`): it cost the ReLU students accuracy. At
       weight 0 no adapters are made and the term is not computed.

Trainer trap: `YOLO(pruned).train()` rebuilds the model from its yaml
and silently trains an unpruned network. `DistillationTrainer.get_model` returns the pruned
module itself, and the stage checks the trained result still has the pruned parameter count.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from compress import env
from compress.defaults import DEFAULT_KD_FEATURE_WEIGHT
from compress.errors import UnsupportedModelError

env.configure()


@dataclass
class DistillSettings:
    epochs: int = 10
    imgsz: int = 256
    batch: int = 16
    temperature: float = 2.0
    logit_weight: float = 1.0
    feature_weight: float = DEFAULT_KD_FEATURE_WEIGHT
    lr0: float = 0.002
    workers: int = 2
    close_mosaic: int = 3
    seed: int = 0


def head_outputs(preds) -> dict:
    """The raw head dict {boxes, scores, feats} from a training- or eval-mode forward."""
    if isinstance(preds, tuple):
        preds = preds[1]
    if isinstance(preds, dict) and "one2many" in preds:
        preds = preds["one2many"]
    return preds


def feature_channels(model: nn.Module, imgsz: int = 64) -> list[int]:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        feats = head_outputs(model(torch.zeros(1, 3, imgsz, imgsz)))["feats"]
    model.train(was_training)
    return [f.shape[1] for f in feats]


def make_adapters(student: nn.Module, teacher: nn.Module) -> nn.ModuleList:
    """1x1 projections from the student's neck widths to the teacher's."""
    return nn.ModuleList(nn.Conv2d(s, t, 1, bias=False)
                         for s, t in zip(feature_channels(student), feature_channels(teacher)))


class DistillationLoss:
    """Wraps the student's detection criterion; adds KD terms while training."""

    def __init__(self, base, student: nn.Module, teacher: nn.Module, settings: DistillSettings):
        self.base = base
        self.student = student
        self.teacher = teacher.eval()
        for param in self.teacher.parameters():
            param.requires_grad_(False)
        self.settings = settings
        self.last_terms: dict[str, float] = {}

    def kd_terms(self, student_out: dict, teacher_out: dict, adapters: nn.ModuleList | None) -> dict[str, torch.Tensor]:
        temp = self.settings.temperature
        s_cls, t_cls = student_out["scores"], teacher_out["scores"]
        cls_kd = F.binary_cross_entropy_with_logits(s_cls / temp, torch.sigmoid(t_cls / temp)) * temp ** 2
        batch, channels, anchors = student_out["boxes"].shape
        s_box = student_out["boxes"].view(batch, 4, channels // 4, anchors)
        t_box = teacher_out["boxes"].view(batch, 4, channels // 4, anchors)
        kl = F.kl_div(F.log_softmax(s_box / temp, dim=2), F.softmax(t_box / temp, dim=2), reduction="none").sum(2)
        weight = torch.sigmoid(t_cls).amax(1, keepdim=True)  # [B, 1, A]: teacher confidence per anchor
        box_kd = (kl * weight).sum() / weight.sum().clamp(min=1e-6) / 4 * temp ** 2
        terms = {"cls_kd": cls_kd, "box_kd": box_kd}
        if adapters is not None:
            terms["feat_kd"] = sum(F.mse_loss(adapter(s), t) for adapter, s, t in
                                   zip(adapters, student_out["feats"], teacher_out["feats"])) / len(adapters)
        return terms

    def __call__(self, preds, batch):
        loss, items = self.base(preds, batch)
        if not self.student.training:  # validation: plain detection loss
            return loss, items
        student_out = head_outputs(preds)
        with torch.no_grad():
            teacher_out = head_outputs(self.teacher(batch["img"]))
        adapters = self.student.kd_adapters if self.settings.feature_weight > 0 else None
        terms = self.kd_terms(student_out, teacher_out, adapters)
        kd = self.settings.logit_weight * (terms["cls_kd"] + terms["box_kd"])
        if "feat_kd" in terms:
            kd = kd + self.settings.feature_weight * terms["feat_kd"]
        self.last_terms = {k: float(v.detach()) for k, v in terms.items()}
        batch_size = student_out["scores"].shape[0]
        # Ultralytics returns per-component losses times batch size and backprops their sum.
        return loss + kd * batch_size / loss.numel(), items


def attach_distillation(student: nn.Module, teacher: nn.Module, settings: DistillSettings) -> DistillationLoss:
    """Give the student KD adapters (so the optimizer trains them; only when the feature term is
    on) and a distillation criterion."""
    if settings.feature_weight > 0 and not hasattr(student, "kd_adapters"):
        student.kd_adapters = make_adapters(student, teacher)
    student.criterion = DistillationLoss(student.init_criterion(), student, teacher, settings)
    return student.criterion


def strip_adapters(model: nn.Module) -> nn.Module:
    if hasattr(model, "kd_adapters"):
        del model.kd_adapters
    model.criterion = None
    return model


def _trainer_class():
    from ultralytics.models.yolo.detect import DetectionTrainer

    class DistillationTrainer(DetectionTrainer):
        """Trains the given (pruned) module instead of rebuilding one from its yaml."""

        student: nn.Module = None

        def get_model(self, cfg=None, weights=None, verbose=True):
            return self.student

    return DistillationTrainer


def distill(student_weights: Path, teacher_weights: Path | None, data: Path, out_dir: Path,
            settings: DistillSettings, device: str = "cpu") -> Path:
    """Fine-tune the pruned student with KD on `device` (compress.env.training_device); returns a
    normal checkpoint (adapters removed).

    With no teacher it is a plain fine-tune on the same trainer and schedule: the
    equal-budget baseline that distillation is measured against.
    """
    import ultralytics.utils.torch_utils as torch_utils

    from compress import yolo
    from compress.prune import save_checkpoint

    torch_utils.NUM_THREADS = env.cpu_threads()
    student = yolo.load(student_weights).model
    # Checkpoints are saved frozen; the trainer would unfreeze each tensor itself, with a warning
    # line per tensor (hundreds per training) drowning the stage lines.
    for param in student.parameters():
        if param.dtype.is_floating_point:
            param.requires_grad_(True)
    teacher = yolo.load(teacher_weights).model.float() if teacher_weights else None
    pruned_params = sum(p.numel() for p in student.parameters())
    if teacher is not None and settings.feature_weight > 0:
        student.kd_adapters = make_adapters(student, teacher)
    trainer_cls = _trainer_class()
    trainer = trainer_cls(overrides=dict(
        model=str(student_weights), data=str(yolo.check_data(data)), epochs=settings.epochs, imgsz=settings.imgsz,
        batch=settings.batch, workers=settings.workers, device=device, seed=settings.seed, deterministic=True,
        plots=False, amp=False, val=False, close_mosaic=settings.close_mosaic, optimizer="AdamW",
        lr0=settings.lr0, warmup_epochs=0.5, project=str(Path(out_dir).resolve()), name="train", exist_ok=True,
        verbose=False,
    ))
    trainer.student = student

    def on_train_start(trainer):
        attach_distillation(trainer.model, teacher.to(trainer.device), settings)

    if teacher is not None:
        trainer.add_callback("on_train_start", on_train_start)
    trainer.train()
    weights_dir = Path(out_dir) / "train" / "weights"
    best = weights_dir / "best.pt" if (weights_dir / "best.pt").exists() else weights_dir / "last.pt"
    trained = strip_adapters(copy.deepcopy(yolo.load(best).model))
    trained_params = sum(p.numel() for p in trained.parameters())
    if trained_params != pruned_params:
        raise UnsupportedModelError(
            f"the trained model has {trained_params:,} parameters, the pruned one {pruned_params:,}: "
            "the trainer did not train the pruned architecture")
    return save_checkpoint(trained, Path(out_dir) / "model.pt", train_args={"imgsz": settings.imgsz, "task": "detect"})
