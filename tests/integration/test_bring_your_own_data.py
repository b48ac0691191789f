"""A user's own dataset through `make`'s stages, as typed: 37 non-square tiles of one class,
.txt image lists, a relative `path:` (so 37 calibration images: a ragged batch of 8)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from compress.manifest import Manifest
from tests import byo_dataset
from tests.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Small budgets: this checks that every stage runs on such data, not how well it learns.
BUDGET = ["PROFILE=tiny", "EPOCHS=3", "DISTILL_EPOCHS=1", "CALIBRATION_IMAGES=64"]


def make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=1800, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.fixture(scope="module")
def user_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("aerial")
    return byo_dataset.make(root, train=37, val=11), root


def test_own_dataset_runs_every_stage(user_data, tmp_path_factory):
    data_yaml, _ = user_data
    artifacts = tmp_path_factory.mktemp("byo") / "artifacts"
    # the neck-feature distillation term (off by default) on, as typed: its adapters must fit a
    # one-class head too
    common = [f"DATA={data_yaml}", f"ARTIFACTS={artifacts}", *BUDGET, "KD_FEATURE_WEIGHT=0.5"]

    # 1. a baseline under the floor stops the run with one clear message, before compressing
    stopped = make("pipeline", *common, "MIN_BASELINE_MAP=1.0")
    assert stopped.returncode != 0
    assert "below the floor of 1.0" in stopped.stderr and "EPOCHS=" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert Manifest(artifacts).get("search") is None

    # 2. overridden, the run goes on through every stage (the baseline is reused, not retrained)
    forced = make("pipeline", *common, "MIN_BASELINE_MAP=1.0", "ALLOW_WEAK_BASELINE=1")
    assert forced.returncode == 0, forced.stdout[-3000:] + forced.stderr[-3000:]
    assert "--- baseline: up to date" in forced.stdout and "WARNING" in forced.stdout
    # a quiet console: the trainer is handed unfrozen students (else one warning line per tensor)
    assert "requires_grad" not in forced.stdout + forced.stderr
    manifest = Manifest(artifacts)
    dataset = manifest.get("dataset").metrics
    assert (dataset["train_images"], dataset["val_images"], dataset["classes"]) == (37, 11, 1)
    assert manifest.get("baseline").settings["imgsz"] == 128  # from the 400 px tiles, capped by the tiny profile
    search = manifest.get("search")
    assert search.settings["feature_weight"] == 0.5
    for info in search.metrics["candidates"].values():
        quant = info["quantization"]
        assert quant["calibration_images"] == 37 and quant["calibration_batch"] == 1
    report = json.loads((artifacts / "report" / "report.json").read_text())
    # the two FP32 baselines and every measured candidate, exactly one served, within the budget
    assert len(report["rows"]) >= 3 and all(r["bs1_ms"] > 0 for r in report["rows"])
    assert sum(r["served"] for r in report["rows"]) == 1 and report["served"]["within_budget"]

    # 3. nothing is served ungated; the override builds a repository that serves these images
    repo = artifacts.parent / "repo"
    refused = make("repo", f"ARTIFACTS={artifacts}", f"REPO={repo}")
    assert refused.returncode != 0 and "has passed the parity gate" in refused.stderr
    built = make("repo", f"ARTIFACTS={artifacts}", f"REPO={repo}", "ALLOW_UNGATED=1")
    assert built.returncode == 0, built.stderr[-3000:]
    assert "1 classes" in built.stdout and "128x128" in built.stdout
    verified = make("verify", f"ARTIFACTS={artifacts}", f"REPO={repo}")
    assert verified.returncode == 0, verified.stdout[-3000:] + verified.stderr[-3000:]
    deployed = json.loads((artifacts / "parity" / "deployed.json").read_text())
    assert deployed["passed"] and deployed["stage"] == report["served"]["name"]

    # 4. MAX_MAP_DROP as typed trades accuracy for speed: every row is within it, so the report
    # serves the fastest measured one
    traded = make("bench", *common, "MIN_BASELINE_MAP=1.0", "ALLOW_WEAK_BASELINE=1", "MAX_MAP_DROP=100")
    assert traded.returncode == 0, traded.stdout[-3000:] + traded.stderr[-3000:]
    report = json.loads((artifacts / "report" / "report.json").read_text())
    assert report["served"]["rule"].startswith("the fastest") and "within 100 points" in report["served"]["rule"]
    servable = [r for r in report["rows"] if r["precision"] == "int8" or r["candidate"] is None]
    served = next(r for r in report["rows"] if r["served"])
    assert served is min(servable, key=lambda r: r["bs1_ms"])


def test_own_dataset_trained_long_enough_serves_a_model_within_the_budget(user_data, tmp_path_factory):
    """`make DATA=... EPOCHS=120`, as a new user would run it on 37 tiles: the search serves a model
    within the default budget (not nothing) and the gate passes it."""
    data_yaml, _ = user_data
    artifacts = tmp_path_factory.mktemp("byo120") / "artifacts"
    done = make("pipeline", "parity", f"DATA={data_yaml}", f"ARTIFACTS={artifacts}", "PROFILE=tiny", "EPOCHS=120")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((artifacts / "report" / "report.json").read_text())
    served = report["served"]
    assert served["budget_points"] == 1.0 and served["within_budget"] and served["drop_points"] <= 1.0
    # a compressed model, not the FP32 fallback: on 37 tiles the extra epochs hurt the unpruned model,
    # so the reference is the baseline and its own INT8 is the safe end of the front
    assert served["precision"] == "int8", served["rule"]
    assert json.loads((artifacts / "parity" / "parity.json").read_text())["passed"]
    assert json.loads((artifacts / "served.json").read_text())["stage"] == served["name"]


def test_changing_an_image_invalidates_the_stages(user_data, tmp_path):
    """Stage reuse keys on the files the yaml resolves to, not on the yaml's text."""
    from compress.pipeline import PROFILES, Context, run_stages

    data_yaml, root = user_data
    ctx = Context(tmp_path / "artifacts", PROFILES["tiny"], data=data_yaml)
    run_stages(ctx, ["dataset"])
    first = ctx.manifest.get("dataset").metrics["content_hash"]
    label = sorted((root / "labels" / "train").glob("*.txt"))[0]
    original = label.read_text()
    label.write_text(original + "0 0.5 0.5 0.1 0.1\n")
    try:
        run_stages(ctx, ["dataset"])
        assert ctx.manifest.get("dataset").metrics["content_hash"] != first
    finally:
        label.write_text(original)
