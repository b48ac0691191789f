"""Task-level agreement of a candidate detector with its reference, in-process.

Both run with the served pre/post-processing (compress.local_detector) on the same input
tensors; their heads are compared by compress.detection.compare_heads, the function the served
shadow parity (compress.shadow) runs on live frames. So the gate's figures, the drift baseline it
writes into the repository and the agreement the server exports are one computation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compress.detection import SERVED_CONF, SERVED_IOU, SERVED_MAX_DET, AgreementCounts, Detections, compare_heads
from compress.evaluate import val_split
from compress.local_detector import LocalDetector


def compare_on_frames(reference: LocalDetector, candidate: LocalDetector, payloads: list[bytes],
                      batch_size: int = 0) -> tuple[list[AgreementCounts], list[Detections]]:
    """Per-frame agreement and the candidate's detections at its threshold (`batch_size` 0: one
    batch). The input tensors are prepared once, as the served preprocess does, and fed to both."""
    size = batch_size or max(len(payloads), 1)
    counts, served = [], []
    for start in range(0, len(payloads), size):
        images, letterbox_params = candidate.prepare(payloads[start:start + size])
        reference_images = images if reference.info.pixel_type == candidate.info.pixel_type else (
            images.astype(np.float32) / 255.0 if reference.info.pixel_type == "float32" else
            (images * 255.0).round().astype(np.uint8))
        part, detections, _ = compare_heads(reference.heads(reference_images), candidate.heads(images),
                                            letterbox_params, candidate.info.image_size, candidate.info.strides,
                                            candidate.conf, candidate.iou, candidate.max_det)
        counts += part
        served += detections
    return counts, served


def agreement_on(reference_onnx: Path, candidate_onnx: Path, payloads: list[bytes], conf: float = SERVED_CONF,
                 batch_size: int = 0, candidate_runtime: dict | None = None,
                 **detector_args) -> tuple[AgreementCounts, list[Detections]]:
    """`candidate_runtime`: the candidate's session (`runtime`, `precision`: compress.runtimes),
    default ONNX Runtime like the reference's."""
    reference = LocalDetector(reference_onnx, conf_threshold=conf, **detector_args)
    candidate = LocalDetector(candidate_onnx, conf_threshold=conf, **(candidate_runtime or {}), **detector_args)
    counts, served = compare_on_frames(reference, candidate, payloads, batch_size)
    return sum(counts, AgreementCounts()), served


def task_parity(reference_onnx: Path, candidate_onnx: Path, data_yaml: Path, conf: float,
                candidate_runtime: dict | None = None) -> dict:
    """Agreement of the candidate with the reference at detection threshold `conf` on the val split:
    recall, score drift, class flips (gated) and the extra-box share."""
    payloads = [item.path.read_bytes() for item in val_split(data_yaml)]
    counts, _ = agreement_on(reference_onnx, candidate_onnx, payloads, conf, candidate_runtime=candidate_runtime)
    return counts.summary()


def shadow_baseline(reference_onnx: Path, served_onnx: Path, data_yaml: Path, conf: float = SERVED_CONF,
                    iou: float = SERVED_IOU, max_det: int = SERVED_MAX_DET, candidate_runtime: dict | None = None) -> dict:
    """What the served shadow is held against, measured on the val split at the served thresholds:
    agreement with the reference (the one accuracy is budgeted against; for a pruned model not the
    FP32 twin the gate's agreement checks use) and the served model's drift signals."""
    from compress.shadow import drift_baseline

    payloads = [item.path.read_bytes() for item in val_split(data_yaml)]
    counts, served = agreement_on(reference_onnx, served_onnx, payloads, conf, iou_threshold=iou, max_det=max_det,
                                  candidate_runtime=candidate_runtime)
    return {"agreement": counts.summary(), "drift": drift_baseline(served), "conf": conf, "iou": iou, "max_det": max_det}


def baseline_matches(baseline: dict, conf: float, iou: float, max_det: int) -> bool:
    """Was `baseline` measured at these thresholds?"""
    return (baseline.get("conf"), baseline.get("iou", SERVED_IOU), baseline.get("max_det", SERVED_MAX_DET)) == (
        conf, iou, max_det)
