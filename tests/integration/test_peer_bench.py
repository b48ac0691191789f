"""`make bench-peers` as typed on the tiny pipeline: Ultralytics' real OpenVINO INT8 export (NNCF),
the served model, both runtimes, one evaluator."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from compress.benchmark import ROUNDS
from compress.manifest import Manifest, file_hash
from compress.peer_bench import (BASELINE, BASELINE_OPENVINO, PEER, PEER_F32, SERVED, SERVED_NNCF, SERVED_NNCF_F32,
                                 SERVED_OPENVINO, export_peer)
from compress.records import GatedModel, Report

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def peers(tiny_artifacts) -> dict:
    subprocess.run(["make", "bench-peers", f"ARTIFACTS={tiny_artifacts}"], cwd=ROOT, check=True,
                   env={**os.environ, "MAKEFLAGS": ""})
    return json.loads((tiny_artifacts / "peers" / "peers.json").read_text())


def test_the_peer_is_ultralytics_int8_export_of_the_baseline(peers, tiny_artifacts):
    import openvino as ov

    manifest = Manifest(tiny_artifacts)
    xml = Path(peers["rows"][PEER]["path"])
    assert xml.name.endswith(".xml") and (xml.parent / "metadata.yaml").exists()
    ops = [op.get_type_name() for op in ov.Core().read_model(str(xml)).get_ops()]
    assert ops.count("FakeQuantize") > 10  # NNCF quantized it (an FP32 IR has none)
    record = json.loads((tiny_artifacts / "peers" / "peer_export.json").read_text())
    assert record["wanted"]["weights_sha256"] == file_hash(manifest.output("baseline", "weights"))
    assert record["wanted"]["export"]["split"] == "train"  # not calibrated on the split it is measured on
    before = xml.stat().st_mtime_ns
    again = export_peer(manifest.output("baseline", "weights"), manifest.output("dataset", "data_yaml"),
                        peers["imgsz"], tiny_artifacts / "peers", manifest.get("dataset").metrics["content_hash"])
    assert again == xml and xml.stat().st_mtime_ns == before  # same weights, same tools: not exported again


def test_one_evaluator_gives_the_reports_numbers_and_the_runtimes_agree(peers, tiny_artifacts):
    rows = peers["rows"]
    report = Report.load(tiny_artifacts)
    by_file = {str(tiny_artifacts / row["onnx"]): row["map50_95"] for row in report.data["rows"]}
    # the same file through the same evaluator: exactly the report's figure
    assert rows[BASELINE]["map50_95"] == by_file[rows[BASELINE]["path"]]
    # what `make repo` serves: the gate's record where there is one, else the report's choice, said so
    served = GatedModel.load(tiny_artifacts).onnx if peers["gated"] else report.served.onnx
    assert rows[SERVED]["path"] == str(served)
    assert peers["gated"] == (tiny_artifacts / "served.json").exists()
    assert rows[SERVED]["map50_95"] == by_file[rows[SERVED]["path"]]  # the report measured what is served
    # OpenVINO at f32 on the same file: the runtime changes the speed, not the answer
    assert abs(rows[BASELINE_OPENVINO]["map50_95"] - rows[BASELINE]["map50_95"]) <= 0.005
    assert abs(rows[SERVED_OPENVINO]["map50_95"] - rows[SERVED]["map50_95"]) <= 0.005
    assert rows[PEER]["map50_95"] > 0 and peers["ultralytics_validator"]["peer"]["map50_95"] > 0


def test_every_row_is_timed_in_its_own_process_at_the_precision_openvino_chose(peers):
    import openvino as ov

    default = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").to_string()
    rows = peers["rows"]
    assert rows[PEER]["facts"]["inference_precision"] == default  # as Ultralytics' runtime runs it
    assert rows[SERVED_NNCF]["facts"]["inference_precision"] == default
    for key in (PEER_F32, SERVED_OPENVINO, BASELINE_OPENVINO, SERVED_NNCF_F32):
        assert rows[key]["facts"]["inference_precision"] == "f32"
    pids = {row["facts"]["pid"] for row in rows.values()}
    assert len(pids) == len(rows) and os.getpid() not in pids
    for key, row in rows.items():
        assert row["facts"]["threads"] == peers["threads"]  # what each runtime reports it runs with
        for timing in ("latency", "end_to_end"):
            for batch, count in ROUNDS.items():
                assert len(peers[timing][key][f"bs{batch}_rounds"]) == count
        assert row["bs1_ms"] > 0 and row["end_to_end_bs8_ms"] > 0
    frames = __import__("numpy").load(Path(rows[PEER]["path"]).parents[1] / "frames.npz")
    assert frames["images"].shape == (8, 3, peers["imgsz"], peers["imgsz"])  # real val frames, not noise
    assert frames["images"].std() > 0.05


def test_the_report_says_where_the_served_model_wins_and_loses(peers, tiny_artifacts):
    text = (tiny_artifacts / "peers" / "peers.md").read_text()
    for row in peers["rows"].values():
        assert f"| {row['label']} | {row['runtime']}" in text
    assert "Where the served model wins and where it loses" in text
    verdicts = [line for line in text.splitlines() if line.startswith("- batch ")]
    assert len(verdicts) == 6 and all(("faster than" in v) != ("slower than" in v) for v in verdicts)
    assert f"all {peers['calibration_images']['peer']} images of the `train` split" in text
    assert (tiny_artifacts / "peers" / "peers.png").stat().st_size > 10_000


def test_end_to_end_timing_runs_the_served_post_processing_on_the_frames_it_saved(peers, tiny_artifacts):
    import numpy as np

    from compress.benchmark import WorkerTimer
    from compress.evaluate import val_split
    from compress.local_detector import LocalDetector

    served = Path(peers["rows"][SERVED]["path"])
    frames_path = tiny_artifacts / "peers" / "frames.npz"
    frames = np.load(frames_path)
    detector = LocalDetector(served)
    payloads = [t.path.read_bytes() for t in val_split(Manifest(tiny_artifacts).output("dataset", "data_yaml"), 8)]
    # the saved frames are the served preprocess's own output: the boxes equal those of the encoded frames
    for got, want in zip(detector.detect_prepared(frames["images"], frames["params"]), detector.detect(payloads)):
        assert np.array_equal(got.boxes, want.boxes) and np.array_equal(got.classes, want.classes)
    assert sum(len(d) for d in detector.detect(payloads)) > 0  # there is post-processing work to time
    timer = WorkerTimer(served, (peers["imgsz"], peers["imgsz"]), 1, frames=frames_path)
    from compress.benchmark import _frames_of

    batch = _frames_of({"images": frames["images"], "params": frames["params"]}, 8)  # what the worker feeds
    want = sum(len(d) for d in LocalDetector(served, threads=1).detect_prepared(*batch))
    try:
        assert timer(8) > 0 and timer.last_boxes is None  # the detector alone: no post-processing
        assert timer(8, end_to_end=True) > 0
        # the decode and NMS are inside the end-to-end figure: the worker returned the served boxes
        # (a count, not a timing: on the tiny model they are within the detector's timing noise)
        assert timer.last_boxes == want
    finally:
        timer.close()


def test_the_served_models_nncf_twin_is_quantized_with_the_served_recipe(peers, tiny_artifacts):
    """Same FP32 twin, same calibration images, the same layers float: only the quantizer and the
    runtime differ from the served row."""
    import openvino as ov

    served = Report.load(tiny_artifacts).served
    assert served.precision == "int8"  # the tiny pipeline serves an INT8 model, so the twin row exists
    record = peers["nncf_twin"]
    assert record["float_nodes"] == served.quantization["float_nodes"]
    assert record["calibration_images"] == served.quantization["calibration_images"]
    model = ov.Core().read_model(peers["rows"][SERVED_NNCF]["path"])
    convolutions = {op.get_friendly_name(): op for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"}
    fed = {name: any(op.input_value(i).get_node().get_type_name() == "FakeQuantize" for i in range(op.get_input_size()))
           for name, op in convolutions.items()}
    float_convs = record["float_convolutions"]
    assert set(float_convs) <= set(convolutions)
    assert len(float_convs) == len(served.quantization["float_nodes"])
    assert not any(fed[name] for name in float_convs)  # kept float, as in the served Q/DQ file
    # the rest quantized by NNCF's own rules (it leaves some, e.g. after a Concat, to its fusion patterns):
    # at least half of them, where a quantizer that did nothing would give none
    assert sum(fed.values()) >= (len(convolutions) - len(float_convs)) / 2
    assert peers["rows"][SERVED_NNCF]["map50_95"] > 0
    assert "NNCF INT8 on OpenVINO" in (tiny_artifacts / "peers" / "peers.md").read_text()
