"""YOLO-aware structured channel pruning (each search candidate's depth) with torch-pruning's dependency graph.

- C2f (YOLOv8) and C3k2 (YOLO11, a C2f subclass) split one conv's output with `chunk`, which
  the dependency graph cannot follow: each is swapped for `SplitFreeC2f`, two convs holding
  the two halves of the original weights (outputs unchanged).
- C2PSA / PSABlock attention (YOLO11) reshapes channels into heads: kept whole (ignored).
- The Detect head's final box/class convs and DFL keep their widths (the output layout).
- Channels are rounded to multiples of 8; the channel ratio that reaches the MACs reduction is
  found by bisection and applied in one shot (no training between steps: `--prune-steps` splits
  it along torch-pruning's schedule, but nothing recovers accuracy in between).

The pruned module is saved whole in an Ultralytics-style checkpoint (tp.state_dict cannot
handle Detect), so `YOLO("pruned.pt")` loads it while this module is importable.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from compress.errors import UnsupportedModelError

IMPORTANCES = ("magnitude", "bn_scale", "lamp")
MAX_LAYER_RATIO = 0.75  # no layer loses more than this share of its channels


class SplitFreeC2f(nn.Module):
    """C2f / C3k2 without `chunk`: `cv0` and `cv1` produce the two halves `cv1` used to."""

    def __init__(self, block: nn.Module):
        super().__init__()
        half = block.cv1.conv.out_channels // 2
        self.c = block.c
        self.cv0 = _conv_slice(block.cv1, 0, half)
        self.cv1 = _conv_slice(block.cv1, half, 2 * half)
        self.cv2 = block.cv2
        self.m = block.m
        for attr in ("f", "i", "type", "np"):  # Ultralytics' graph bookkeeping
            if hasattr(block, attr):
                setattr(self, attr, getattr(block, attr))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv0(x), self.cv1(x)]
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


def _conv_slice(conv_block: nn.Module, start: int, stop: int) -> nn.Module:
    """A copy of an Ultralytics Conv (conv + bn + act) keeping output channels start:stop."""
    part = copy.deepcopy(conv_block)
    conv, bn = part.conv, part.bn
    conv.weight = nn.Parameter(conv.weight.data[start:stop].clone())
    if conv.bias is not None:
        conv.bias = nn.Parameter(conv.bias.data[start:stop].clone())
    conv.out_channels = stop - start
    bn.weight = nn.Parameter(bn.weight.data[start:stop].clone())
    bn.bias = nn.Parameter(bn.bias.data[start:stop].clone())
    bn.running_mean = bn.running_mean[start:stop].clone()
    bn.running_var = bn.running_var[start:stop].clone()
    bn.num_features = stop - start
    return part


def make_prunable(model: nn.Module) -> nn.Module:
    """Swap every C2f/C3k2 for SplitFreeC2f in place; returns the model."""
    from ultralytics.nn.modules.block import C2f

    for name, child in model.named_children():
        if isinstance(child, C2f) and hasattr(child, "cv1"):
            make_prunable(child)
            setattr(model, name, SplitFreeC2f(child))
        else:
            make_prunable(child)
    return model


def ignored_layers(model: nn.Module) -> list[nn.Module]:
    """Layers whose output channels must not change: head outputs, DFL, attention blocks."""
    from ultralytics.nn.modules.block import C2PSA, PSABlock
    from ultralytics.nn.modules.head import Detect

    ignored: list[nn.Module] = []
    detect = [m for m in model.modules() if isinstance(m, Detect)]
    if not detect:
        raise UnsupportedModelError("no Detect head found: only YOLO detection models can be pruned")
    for head in detect:
        for branch in (*head.cv2, *head.cv3):
            ignored.append(branch[-1])
        ignored.append(head.dfl)
        for extra in ("one2one_cv2", "one2one_cv3"):
            for branch in getattr(head, extra, None) or []:
                ignored.append(branch[-1])
    for module in model.modules():
        if isinstance(module, (C2PSA, PSABlock)):
            ignored.extend(module.modules())
    return ignored


def _importance(name: str):
    import torch_pruning as tp

    if name == "magnitude":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "bn_scale":
        return tp.importance.BNScaleImportance()
    if name == "lamp":
        return tp.importance.LAMPImportance(p=2)
    raise UnsupportedModelError(f"unknown importance {name!r}", hint=f"choose one of {IMPORTANCES}")


def count_macs(model: nn.Module, imgsz: int) -> tuple[float, int]:
    import torch_pruning as tp

    example = torch.zeros(1, 3, imgsz, imgsz)
    macs, params = tp.utils.count_ops_and_params(model, example)
    return float(macs), int(params)


@dataclass
class PruneResult:
    base_macs: float
    macs: float
    base_params: int
    params: int
    ratio: float
    steps: int

    @property
    def macs_reduction(self) -> float:
        return self.base_macs / self.macs


def _pruner(model: nn.Module, imgsz: int, importance: str, ratio: float, steps: int, round_to: int):
    import torch_pruning as tp

    return tp.pruner.MetaPruner(
        model, torch.zeros(1, 3, imgsz, imgsz), importance=_importance(importance), pruning_ratio=ratio,
        # Global ranking (capped per layer) makes MACs fall smoothly with the ratio; per-layer
        # uniform ratios with round_to=8 jump in big steps on nano-sized models.
        global_pruning=True, max_pruning_ratio=MAX_LAYER_RATIO, iterative_steps=steps, ignored_layers=ignored_layers(model), round_to=round_to, output_transform=_flatten,
    )


def _apply(model: nn.Module, imgsz: int, importance: str, ratio: float, steps: int, round_to: int) -> None:
    pruner = _pruner(model, imgsz, importance, ratio, steps, round_to)
    for _ in range(steps):
        # Apply each group as it is yielded: collecting them first leaves stale shapes.
        for group in pruner.step(interactive=True):
            group.prune()


def prune(model: nn.Module, imgsz: int, target_macs_reduction: float, importance: str = "magnitude",
          steps: int = 1, max_ratio: float = 0.9, round_to: int = 8, tolerance: float = 0.04,
          progress=None) -> PruneResult:
    """Prune `model` (a DetectionModel) in place until MACs fall by at least `target_macs_reduction`x.

    The smallest channel ratio that meets the target is found by bisection on copies (MACs fall roughly
    with the square of the kept channels, and rounding to 8 makes the curve steppy); the model
    is then pruned to that ratio in `steps` steps of torch-pruning's linear schedule, back to back
    with no training between them (one-shot pruning; distillation recovers accuracy afterwards).
    """
    if target_macs_reduction <= 1.0:
        raise UnsupportedModelError(f"target MACs reduction must be > 1, got {target_macs_reduction}")
    make_prunable(model)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(True)
    base_macs, base_params = count_macs(model, imgsz)
    low, high, best = 0.0, max_ratio, None
    for trial in range(10):
        ratio = (low + high) / 2
        candidate = copy.deepcopy(model)
        _apply(candidate, imgsz, importance, ratio, 1, round_to)
        reduction = base_macs / count_macs(candidate, imgsz)[0]
        if progress:
            progress(trial, ratio, reduction)
        # The target is a floor: of the ratios that reach it, keep the one that prunes least.
        meets = reduction >= target_macs_reduction
        if best is None or (meets and (best[1] < target_macs_reduction or reduction < best[1])) or \
                (not meets and best[1] < target_macs_reduction and reduction > best[1]):
            best = (ratio, reduction)
        if meets and reduction / target_macs_reduction - 1 <= tolerance:
            break
        low, high = (ratio, high) if reduction < target_macs_reduction else (low, ratio)
    _apply(model, imgsz, importance, best[0], steps, round_to)
    macs, params = count_macs(model, imgsz)
    if abs(base_macs / macs / target_macs_reduction - 1) > 0.1:
        raise UnsupportedModelError(
            f"pruning reached {base_macs / macs:.2f}x fewer MACs, not the {target_macs_reduction}x asked for",
            hint="channel rounding makes some targets unreachable on small models; try a nearby target")
    return PruneResult(base_macs, macs, base_params, params, best[0], steps)


def _flatten(output) -> list[torch.Tensor]:
    """Every tensor in a (nested) model output, for the dependency graph's tracing."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in _flatten(item)]
    return []


ACTIVATIONS = {"silu": nn.SiLU, "relu": nn.ReLU}


def use_activation(model: nn.Module, name: str) -> int:
    """Swap every SiLU for `name` (in place); returns how many were swapped.

    ReLU lets ONNX Runtime fold the activation into the integer conv (QLinearConv clamps at the
    zero point), where SiLU stays a Sigmoid and a Mul between quantized convs. Distillation from
    the SiLU teacher recovers the accuracy.
    """
    if name not in ACTIVATIONS:
        raise UnsupportedModelError(f"unknown activation {name!r}", hint=f"choose one of {sorted(ACTIVATIONS)}")
    swapped = 0
    for module in model.modules():
        for child_name, child in module.named_children():
            if isinstance(child, nn.SiLU) and name != "silu":
                setattr(module, child_name, ACTIVATIONS[name]())
                swapped += 1
    return swapped


def save_checkpoint(model: nn.Module, path: Path, train_args: dict | None = None, extra: dict | None = None) -> Path:
    """An Ultralytics-style checkpoint holding the whole (pruned) module."""
    from datetime import datetime

    import ultralytics

    model = copy.deepcopy(model).float().eval()
    for param in model.parameters():
        param.requires_grad_(False)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model, "ema": None, "train_args": train_args or {}, "date": datetime.now().isoformat(),
                "version": ultralytics.__version__, **(extra or {})}, path)
    return path
