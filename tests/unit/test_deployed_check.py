"""`make verify FRAMES=...`: the served mAP on camera frames is judged against the same decode
in-process (must agree) and against every pixel decoded (the reduced decode's cost, goal 0.3)."""

from __future__ import annotations

import json

import pytest
import yaml

from compress.errors import InputFileError
from tools import verify


def labelled_folder(root, name="1080p"):
    import cv2
    import numpy as np

    folder = root / name
    (folder / "images" / "val").mkdir(parents=True)
    cv2.imwrite(str(folder / "images" / "val" / "frame.jpg"), np.full((108, 192, 3), 90, np.uint8))
    (folder / "data.yaml").write_text(yaml.safe_dump({"path": str(folder), "train": "images/val", "val": "images/val",
                                                       "names": {0: "shape"}}))
    return folder


@pytest.mark.parametrize("served, same, full, agrees, within", [
    (0.9072, 0.9072, 0.9079, True, True),     # reduced decode costs 0.07 points: within the goal
    (0.9072, 0.9072, 0.9172, True, False),    # 1 point lost to the reduced decode: the goal is missed
    (0.9000, 0.9072, 0.9010, False, True),    # the server disagrees with the same model in-process
])
def test_served_camera_frames_are_judged_against_both_decodes(tmp_path, monkeypatch, served, same, full, agrees, within):
    folder = labelled_folder(tmp_path)

    def measured(repo, data_yaml, log_dir, full_decode_reference=False):
        assert full_decode_reference and data_yaml == folder / "data.yaml"
        return {"reduced_decode": True, "conf_threshold": 0.25, "iou_threshold": 0.45, "max_det": 300,
                "served": {"map50": 0.99, "map50_95": served},
                "offline": {"map50": 0.99, "map50_95": same}, "offline_full_decode": {"map50": 0.99, "map50_95": full}}

    monkeypatch.setattr(verify, "deployed_map", measured)
    result = verify.verify_deployed(tmp_path / "repo", tmp_path / "artifacts", 0.2, frames=str(folder))
    assert result["passed"] is agrees and result["full_decode_within"] is within
    assert result["full_decode_delta_points"] == pytest.approx((served - full) * 100, abs=0.01)
    written = json.loads((tmp_path / "artifacts" / "parity" / "deployed_1080p.json").read_text())
    assert written["full_decode_within"] is within
    report = (tmp_path / "artifacts" / "parity" / "deployed_1080p.md").read_text()
    assert ("met" if within else "missed") in report.split("every pixel decoded:", 1)[1]


def test_a_frame_folder_without_labels_is_refused_in_one_line(tmp_path):
    import cv2
    import numpy as np

    (tmp_path / "frames").mkdir()
    cv2.imwrite(str(tmp_path / "frames" / "frame.jpg"), np.full((108, 192, 3), 90, np.uint8))
    with pytest.raises(InputFileError, match="has no labels"):
        verify.verify_deployed(tmp_path / "repo", tmp_path / "artifacts", 0.2, frames=str(tmp_path / "frames"))
