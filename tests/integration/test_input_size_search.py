"""Input size as a search dimension, as typed on the tiny pipeline: `make pipeline SEARCH_SIZES=96`
makes every candidate at 96x96 too (fine-tuned, calibrated and timed at that size), the report and
its budget table say each row's input, and a model served at 96x96 passes the parity gate with a
shadow reference of its own size, is letterboxed to 96x96 by the served preprocess and verified
through the real Triton server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from compress.export import read_info
from compress.manifest import Manifest
from compress.records import GatedModel, Report, SearchRecord
from tests.integration.test_parity_gate import TINY_GATE
from tools.gate import run_gate

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
SMALL = 96  # the tiny profile trains at 128


def make(*args, check=True):
    result = subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=1800, env={**os.environ, "MAKEFLAGS": ""})
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def sized(tiny_artifacts, tmp_path_factory) -> Path:
    artifacts = tmp_path_factory.mktemp("sized") / "artifacts"
    shutil.copytree(tiny_artifacts, artifacts, symlinks=True)
    # a budget every candidate fits: the fastest, a 96x96 one, is served
    make("pipeline", f"ARTIFACTS={artifacts}", "PROFILE=tiny", f"SEARCH_SIZES={SMALL}", "MAX_MAP_DROP=50")
    return artifacts


def test_every_candidate_is_also_made_at_the_smaller_size(sized):
    search = SearchRecord.load(Manifest(sized))
    probes = {p["name"]: p for p in search.metrics["probes"]}
    assert {"int8_reference_96px", "relu_1x_96px", "relu_2x_96px"} <= set(probes)
    assert all(probes[n]["imgsz"] == SMALL for n in probes if n.endswith("_96px"))
    assert search.metrics["architectures"]["relu_2x_96px"]["gmacs"] < search.metrics["architectures"]["relu_2x"]["gmacs"]
    made = [name for name in search.candidates if name.endswith("_96px")]
    assert made, probes
    for name in made:
        candidate = search.candidates[name]
        for kind in ("fp32", "int8"):
            assert read_info(candidate.files[kind]).image_size == (SMALL, SMALL), (name, kind)
        if probes[name]["trained"]:  # fine-tuned at the smaller size, not only exported at it
            import torch

            checkpoint = torch.load(candidate.files["weights"], map_location="cpu", weights_only=False)
            assert checkpoint["train_args"]["imgsz"] == SMALL
        else:  # the reference's own weights, exported at the smaller size
            assert candidate.files["weights"] == Manifest(sized).output("finetune", "weights")


def test_the_report_times_each_row_at_its_own_size_and_says_which(sized):
    report = Report.load(sized).data
    rows = {r["key"]: r for r in report["rows"]}
    assert rows["baseline"]["imgsz"] == 128
    small = [r for r in report["rows"] if r["imgsz"] == SMALL]
    assert small and all(read_info(sized / r["onnx"]).image_size == (SMALL, SMALL) for r in small)
    # the reference's INT8 at the smaller size is held against its own FP32 export at that size
    untrained = rows["int8_reference_96px:int8"]
    assert untrained["twin"] == "int8_reference_96px:fp32" and rows[untrained["twin"]]["imgsz"] == SMALL
    # the same network on a smaller input: the work falls with the input's area ((96/128)^2 = 0.56)
    assert rows["relu_1x_96px:int8"]["gmacs"] < 0.6 * rows["relu_1x:int8"]["gmacs"]
    assert report["served"]["imgsz"] == SMALL and report["served"]["name"].endswith("_96px")
    markdown = (sized / "report" / "report.md").read_text()
    assert "| budget (points) | served | input |" in markdown
    assert all(row["imgsz"] in (SMALL, 128) for row in report["budget_table"])


def test_a_model_served_at_the_smaller_size_is_gated_served_and_verified(sized, tmp_path):
    run_gate(sized, TINY_GATE, allow_mixed_precision=False)
    gated = GatedModel.load(sized)
    assert gated.stage.endswith("_96px"), f"the gate refused every 96x96 candidate: {gated.stage}"
    # the shadow reference sees the served tensor: the reference's weights exported at 96x96
    reference = gated.shadow_reference
    assert read_info(reference).image_size == (SMALL, SMALL) == read_info(gated.onnx).image_size
    assert read_info(reference).metadata["source_sha256"] == read_info(
        Manifest(sized).output("finetune", "onnx")).metadata["source_sha256"]
    repo = tmp_path / "repo"
    make("repo", f"ARTIFACTS={sized}", f"REPO={repo}")
    from tools.repository import RepositoryRecord

    # the served preprocess letterboxes to the model's size: the ensemble's tensor is 96x96
    assert tuple(RepositoryRecord.load(repo).settings.image_size) == (SMALL, SMALL)
    assert "dims: 96" in (repo / "preprocess" / "config.pbtxt").read_text()
    verified = make("verify", f"ARTIFACTS={sized}", f"REPO={repo}")
    assert '"passed": true' in verified.stdout and '"delta_points": 0.0' in verified.stdout


def test_the_peer_bench_times_a_model_served_smaller_on_frames_of_its_own_size(sized):
    """`make bench-peers` after a 96x96 model was gated: the peer and the baseline at 128, the
    served rows (ONNX Runtime, OpenVINO, its NNCF twin) fed frames letterboxed to 96, end to end."""
    import numpy as np

    from compress.peer_bench import BASELINE, PEER, SERVED, SERVED_NNCF

    assert GatedModel.load(sized).stage.endswith("_96px")  # gated by the test above
    make("bench-peers", f"ARTIFACTS={sized}")
    result = json.loads((sized / "peers" / "peers.json").read_text())
    rows = result["rows"]
    assert rows[BASELINE]["imgsz"] == rows[PEER]["imgsz"] == 128
    for key in (SERVED, SERVED_NNCF):
        assert rows[key]["imgsz"] == SMALL and rows[key]["frames"] == "frames_96x96.npz", key
        assert rows[key]["end_to_end_bs8_ms"] > 0 and rows[key]["facts"]
    with np.load(sized / "peers" / "frames_96x96.npz") as frames:
        assert frames["images"].shape[1:] == (3, SMALL, SMALL)
    assert "served: " in (sized / "peers" / "peers.md").read_text() and ": 96x96)" in (sized / "peers" / "peers.md").read_text()


def test_sizes_above_the_trained_one_or_off_the_stride_are_refused_in_one_line(sized):
    for sizes, words in (("160", "above the trained size 128"), ("100", "multiples of 32")):
        refused = make("pipeline", f"ARTIFACTS={sized}", "PROFILE=tiny", f"SEARCH_SIZES={sizes}", check=False)
        assert refused.returncode != 0 and words in refused.stderr, refused.stderr[-2000:]
        assert "Traceback" not in refused.stderr


def test_a_smaller_candidate_served_by_name_gets_a_shadow_reference_of_its_size(sized, tmp_path):
    """STAGE=<candidate> skips the gate (loudly); the shadow still needs the reference on the served tensor."""
    repo = tmp_path / "named"
    built = make("repo", f"ARTIFACTS={sized}", f"REPO={repo}", "STAGE=relu_1x_96px")
    assert "shadow parity 5%" in built.stdout
    reference = repo / "postprocess" / "1" / "reference.onnx"
    assert read_info(reference).image_size == (SMALL, SMALL)
