"""Task-level agreement of a candidate detector with its reference on the val split.

Both run in-process with the served pre/post-processing (compress.local_detector); boxes are
matched by compress.detection.detection_agreement, the same code the served ensemble's shadow
parity uses.
"""

from __future__ import annotations

from pathlib import Path

from compress.detection import detection_agreement
from compress.evaluate import val_split
from compress.local_detector import LocalDetector


def task_parity(reference_onnx: Path, candidate_onnx: Path, data_yaml: Path, conf: float) -> dict:
    """Agreement of the candidate with the reference at detection threshold `conf`."""
    payloads = [item.path.read_bytes() for item in val_split(data_yaml)]
    ref = LocalDetector(reference_onnx, conf_threshold=conf).detect(payloads)
    # A reference box counts as found if the candidate has it at half the threshold: a box
    # whose score moved from 0.26 to 0.24 is score drift (gated on its own), not a lost box.
    cand = LocalDetector(candidate_onnx, conf_threshold=conf / 2).detect(payloads)
    return detection_agreement(ref, cand)
