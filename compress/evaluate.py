"""mAP50 / mAP50-95 of any detector (in-process ONNX, the live Triton ensemble) on a val split.

The detector is a callable taking encoded image bytes and returning per-image `Detections`,
so the served ensemble and the offline model are measured by the same code. Matching and AP
are Ultralytics' (`ap_per_class`, the validator's greedy IoU matching at 0.50:0.95), with
its validation thresholds (conf 0.001, NMS IoU 0.7).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from compress.detection import Detections, box_iou
from compress.errors import InputFileError
from compress.progress import progress

VAL_CONF, VAL_IOU = 0.001, 0.7
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)


@dataclass
class LabelledImage:
    path: Path
    boxes: np.ndarray  # [N, 4] xyxy pixels
    classes: np.ndarray  # [N]


def val_split(data_yaml: Path, limit: int | None = None, split: str = "val") -> list[LabelledImage]:
    """Images and YOLO-format labels of a dataset split, boxes in pixels."""
    from PIL import Image
    from ultralytics.data.utils import exif_size, img2label_paths

    from compress import data

    images = data.load(data_yaml).split(split)[:limit]
    items = []
    for path, label in zip(images, map(Path, img2label_paths([str(p) for p in images]))):
        rows = _label_rows(label)
        with Image.open(path) as image:  # EXIF-rotated size, as Ultralytics' labels and the server's decode
            width, height = exif_size(image)
        xywh = rows[:, 1:5] * [width, height, width, height]
        boxes = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], axis=1)
        items.append(LabelledImage(path, boxes.astype(np.float32), rows[:, 0].astype(int)))
    return items


def _label_rows(label: Path) -> np.ndarray:
    """[N, 5] class cx cy w h of a YOLO label file (segment polygons become their boxes, as in
    Ultralytics); none for a missing or empty file."""
    if not label.exists():
        return np.zeros((0, 5))
    rows = []
    for number, line in enumerate(label.read_text().splitlines(), 1):
        try:
            values = [float(v) for v in line.split()]
        except ValueError:
            raise InputFileError(f"{label}:{number} is not numeric", hint="one 'class cx cy w h' row per object") from None
        if not values:
            continue
        if len(values) == 5:
            rows.append(values)
        elif len(values) >= 7 and len(values) % 2 == 1:
            xy = np.array(values[1:]).reshape(-1, 2)
            (x1, y1), (x2, y2) = xy.min(0), xy.max(0)
            rows.append([values[0], (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1])
        else:
            raise InputFileError(f"{label}:{number} has {len(values)} values",
                                 hint="detection labels are 'class cx cy w h' (or a segment polygon)")
    return np.array(rows, dtype=np.float64).reshape(-1, 5)


def match_predictions(det: Detections, target: LabelledImage) -> np.ndarray:
    """[N, 10] true-positive matrix: Ultralytics' greedy one-to-one matching per IoU threshold."""
    correct = np.zeros((len(det), len(IOU_THRESHOLDS)), dtype=bool)
    if not len(det) or not len(target.classes):
        return correct
    iou = box_iou(target.boxes, det.boxes) * (target.classes[:, None] == det.classes[None, :])
    for i, threshold in enumerate(IOU_THRESHOLDS):
        matches = np.argwhere(iou >= threshold)
        if not len(matches):
            continue
        matches = matches[iou[matches[:, 0], matches[:, 1]].argsort()[::-1]]
        matches = matches[np.unique(matches[:, 1], return_index=True)[1]]
        matches = matches[np.unique(matches[:, 0], return_index=True)[1]]
        correct[matches[:, 1], i] = True
    return correct


def mean_average_precision(detections: list[Detections], targets: list[LabelledImage]) -> dict[str, float]:
    from ultralytics.utils.metrics import ap_per_class

    tp = np.concatenate([match_predictions(d, t) for d, t in zip(detections, targets)] or [np.zeros((0, 10), bool)])
    conf = np.concatenate([d.scores for d in detections]) if detections else np.zeros(0)
    pred_cls = np.concatenate([d.classes for d in detections]) if detections else np.zeros(0)
    target_cls = np.concatenate([t.classes for t in targets])
    if not len(tp):
        return {"map50": 0.0, "map50_95": 0.0}
    ap = ap_per_class(tp, conf, pred_cls, target_cls)[5]  # [classes, 10]
    return {"map50": round(float(ap[:, 0].mean()), 4), "map50_95": round(float(ap.mean()), 4)}


def evaluate(detect: Callable[[list[bytes]], list[Detections]], data_yaml: Path, batch: int = 8,
             limit: int | None = None, desc: str = "mAP") -> dict[str, float]:
    targets = val_split(data_yaml, limit)
    detections: list[Detections] = []
    for start in progress(range(0, len(targets), batch), desc=desc, total=-(-len(targets) // batch)):
        chunk = targets[start:start + batch]
        detections.extend(detect([t.path.read_bytes() for t in chunk]))
    return mean_average_precision(detections, targets)


def evaluate_onnx(onnx_path: Path, data_yaml: Path, threads: int = 0, limit: int | None = None,
                  runtime: str = "onnxruntime", precision: str = "f32") -> dict[str, float]:
    """mAP of a detector file (ONNX, or an OpenVINO IR) run in-process on `runtime`."""
    from compress.local_detector import LocalDetector

    detector = LocalDetector(onnx_path, conf_threshold=VAL_CONF, iou_threshold=VAL_IOU, threads=threads,
                             runtime=runtime, precision=precision)
    return evaluate(detector.detect, data_yaml, limit=limit, desc=f"mAP {Path(onnx_path).name}")
