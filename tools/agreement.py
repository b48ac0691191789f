"""Task-level agreement of a candidate detector with its reference, in-process.

Both run with the served pre/post-processing (compress.local_detector) on the same input
tensors; their heads are compared by compress.detection.compare_heads, the function the served
shadow parity (compress.shadow) runs on live frames. So the gate's figures, the drift baseline it
writes into the repository and the agreement the server exports are one computation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compress.detection import SERVED_CONF, AgreementCounts, Detections, compare_heads
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
                 batch_size: int = 0, **detector_args) -> tuple[AgreementCounts, list[Detections]]:
    reference = LocalDetector(reference_onnx, conf_threshold=conf, **detector_args)
    candidate = LocalDetector(candidate_onnx, conf_threshold=conf, **detector_args)
    counts, served = compare_on_frames(reference, candidate, payloads, batch_size)
    return sum(counts, AgreementCounts()), served


def task_parity(reference_onnx: Path, candidate_onnx: Path, data_yaml: Path, conf: float) -> dict:
    """Agreement of the candidate with the reference at detection threshold `conf` on the val split:
    recall, score drift, class flips (gated) and the extra-box share."""
    payloads = [item.path.read_bytes() for item in val_split(data_yaml)]
    counts, _ = agreement_on(reference_onnx, candidate_onnx, payloads, conf)
    return counts.summary()


def shadow_baseline(reference_onnx: Path, served_onnx: Path, data_yaml: Path, conf: float) -> dict:
    """What the served shadow is held against, as the gate saw it on the val split: agreement with
    the reference (the one accuracy is budgeted against) and the served model's drift signals."""
    from compress.shadow import drift_baseline

    payloads = [item.path.read_bytes() for item in val_split(data_yaml)]
    counts, served = agreement_on(reference_onnx, served_onnx, payloads, conf)
    return {"agreement": counts.summary(), "drift": drift_baseline(served), "conf": conf}
