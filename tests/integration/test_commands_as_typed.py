"""Commands run exactly as the README and `make help` type them (only the artifacts and repository
folders pointed at the test's own), end to end: what their text says must happen, happens."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def make(*words: str, timeout_s: float = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS")}
    return subprocess.run(["make", "--no-print-directory", *words], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout_s, env=env)


def test_make_repo_for_onnxruntime_on_gpus_writes_gpu_detector_instances(tiny_artifacts, tmp_path):
    from tools import triton_config as tc
    from tools.repository import RepositoryRecord

    repo = tmp_path / "repo"
    done = make("repo", "TARGET=onnxruntime", "DEVICE=gpu", "ALLOW_UNGATED=1", f"ARTIFACTS={tiny_artifacts}",
                f"REPO={repo}")
    assert done.returncode == 0, done.stderr[-2000:]
    config = tc.read_config(repo / tc.DETECTOR / "config.pbtxt")
    assert config.platform == "onnxruntime_onnx"
    assert [g.kind for g in config.instance_group] == [tc.mc.ModelInstanceGroup.KIND_GPU]
    assert RepositoryRecord.load(repo).settings.device == "gpu"
    assert "detector instances 2 x gpu" in done.stdout


def test_make_rollout_test_as_typed_runs_without_a_stream_count(served_repo, tiny_artifacts, tmp_path):
    """No STREAMS=: the rollout takes 80% of the measured capacity, or says it measured none and
    runs a few streams; it gets past its set-up, runs its four phases and writes its report."""
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    for part in ("manifest.json", "dataset"):  # the dataset only: no capacity was measured here
        source = tiny_artifacts / part
        (shutil.copytree if source.is_dir() else shutil.copy)(source, artifacts / part)
    done = make("rollout-test", f"REPO={served_repo}", f"ARTIFACTS={artifacts}", timeout_s=1200)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-2000:])
    result = json.loads((artifacts / "rollout" / "rollout.json").read_text())
    assert result["spec"]["streams"] == 4 and "no capacity measured with 720p frames" in result["load_note"]
    assert result["frame_set"]["name"] == "720p" and result["frames_total"] > 0
    assert set(result["record"]) == {"rolling", "sigkill", "stub-kill", "scale-down"}
    assert (artifacts / "rollout" / "rollout.md").exists() and (artifacts / "rollout" / "rollout.png").exists()


def test_make_watch_shadow_rate_and_audit_as_typed(tiny_artifacts, val_images, tmp_path):
    """The shadow parity commands of the README against a real server on a `make repo` repository."""
    import numpy as np
    import tritonclient.http as http

    from tools.server import TritonServer

    repo = tmp_path / "repo"
    # every frame compared: the CPU gate off (back-to-back frames keep 2 cores over its 0.8, and
    # `make audit` below needs compared frames; the gate has its own tests)
    built = make("repo", "ALLOW_UNGATED=1", "SHADOW_RATE=1", "SHADOW_MAX_CPU=1", f"ARTIFACTS={tiny_artifacts}",
                 f"REPO={repo}")
    assert built.returncode == 0, built.stderr[-2000:]
    assert "shadow parity 100% of frames" in built.stdout
    assert json.loads((repo / "repository.json").read_text())["settings"]["shadow_max_cpu"] == 1.0
    with TritonServer(repo, log_path=tmp_path / "server.log", exit_timeout_s=5) as server:
        with http.InferenceServerClient(server.http_url) as client:
            for path in val_images[:20]:
                image = http.InferInput("IMAGE", [1, 1], "BYTES")
                image.set_data_from_numpy(np.array([[path.read_bytes()]], dtype=object))
                client.infer("yolo", [image])
        metrics_address = server.metrics_url.split("//")[1].split("/")[0]
        watched = make("watch", f"METRICS_URL={metrics_address}", "DURATION=7s", timeout_s=120)
        assert watched.returncode == 0, watched.stderr[-2000:]
        assert "[watch]" in watched.stdout and "live agreement with the FP32 reference" in watched.stdout
        unset = make("shadow-rate", f"URL={server.http_url}")
        assert unset.returncode != 0 and "set SHADOW_RATE=" in unset.stderr
        switched = make("shadow-rate", "SHADOW_RATE=0", f"URL={server.http_url}", timeout_s=300)
        assert switched.returncode == 0 and "rate 0.0" in switched.stdout, switched.stderr[-2000:]
    audited = make("audit", f"REPO={repo}", f"ARTIFACTS={tiny_artifacts}", timeout_s=600)
    assert audited.returncode == 0, audited.stderr[-2000:]
    assert (tiny_artifacts / "audit" / "agreement_over_time.png").exists()
    assert "frames compared in the agreement log" in (tiny_artifacts / "audit" / "audit.md").read_text()
    stopped = make("watch", "METRICS_URL=127.0.0.1:9", "DURATION=2s", timeout_s=60)  # nothing listens there
    assert stopped.returncode != 0 and "cannot read" in stopped.stderr and "Traceback" not in stopped.stderr
