"""Thin, lazy wrappers around Ultralytics: load, train, evaluate, describe a detector."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from compress import env
from compress.errors import InputFileError, UnsupportedModelError, require_file

env.configure()


@dataclass
class TrainSettings:
    model: str = "yolov8n.yaml"
    epochs: int = 60
    imgsz: int = 256
    batch: int = 16
    seed: int = 0
    workers: int = 2
    close_mosaic: int = 5
    optimizer: str = "AdamW"  # "auto": Ultralytics picks AdamW(lr 0.002 x 5 / (4 + classes)) for short runs
    lr0: float = 0.002  # ignored with "auto"
    device: str = "cpu"  # Ultralytics' device: "cpu" or CUDA indices (compress.env.training_device)


def load(weights: Path):
    """An Ultralytics YOLO detect model from a .pt checkpoint or a model .yaml."""
    from ultralytics import YOLO

    weights = Path(weights)
    if weights.suffix == ".pt":
        require_file(weights, "weights")
    try:
        model = YOLO(str(weights), task="detect")
    except Exception as error:  # ultralytics raises many kinds for unreadable files
        raise UnsupportedModelError(f"cannot load {weights}: {error}") from None
    if model.task != "detect":
        raise UnsupportedModelError(f"{weights} is a {model.task!r} model; only detection models are supported")
    return model


def checkpoint_imgsz(model, default: int) -> int:
    """The image size a checkpoint was trained at, else `default`."""
    args = getattr(model.model, "args", None) or {}
    imgsz = args.get("imgsz") if isinstance(args, dict) else getattr(args, "imgsz", None)
    if isinstance(imgsz, (list, tuple)):
        imgsz = max(imgsz)
    return int(imgsz or default)


def check_data(data: Path) -> Path:
    data = require_file(data, "dataset yaml")
    if data.suffix not in (".yaml", ".yml"):
        raise InputFileError(f"{data} is not a data.yaml", hint="pass an Ultralytics dataset yaml with DATA=")
    return data


def evaluate(model, data: Path, imgsz: int, batch: int = 16, device: str = "cpu") -> dict:
    """mAP50 and mAP50-95 on the dataset's val split with Ultralytics' validator, on `device`."""
    metrics = model.val(data=str(check_data(data)), imgsz=imgsz, batch=batch, device=device, plots=False,
                        verbose=False, workers=0)
    return {"map50": round(float(metrics.box.map50), 4), "map50_95": round(float(metrics.box.map), 4)}


def train(data: Path, out_dir: Path, settings: TrainSettings) -> Path:
    """Train from a model yaml; returns the best checkpoint."""
    import ultralytics.utils.torch_utils as torch_utils

    torch_utils.NUM_THREADS = env.cpu_threads()
    model = load(Path(settings.model))
    model.train(
        data=str(check_data(data)), imgsz=settings.imgsz, epochs=settings.epochs, batch=settings.batch,
        workers=settings.workers, device=settings.device, seed=settings.seed, deterministic=True, plots=False,
        amp=False, val=False, close_mosaic=settings.close_mosaic, optimizer=settings.optimizer, lr0=settings.lr0, project=str(Path(out_dir).resolve()),
        name="train", exist_ok=True, verbose=False,
    )
    best = Path(out_dir) / "train" / "weights" / "best.pt"
    return best if best.exists() else Path(out_dir) / "train" / "weights" / "last.pt"


def describe(model, imgsz: int) -> dict:
    """Parameters and GMACs at `imgsz` (thop counts multiply-adds)."""
    from ultralytics.utils.torch_utils import get_flops

    net = model.model if hasattr(model, "model") else model
    params = sum(p.numel() for p in net.parameters())
    gflops = get_flops(net, imgsz)  # ultralytics reports 2*MACs as FLOPs
    return {"params": int(params), "gmacs": round(gflops / 2, 4)}
