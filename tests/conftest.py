"""Shared fixtures. Everything a test needs is generated here; nothing is downloaded.

`tiny_artifacts` runs the real pipeline on the `tiny` profile once per session (reused across
sessions while up to date, under build/test-artifacts); `served_repo` builds a repository
copy from it; `triton` starts the real local tritonserver on free loopback ports.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from compress import env

env.configure()

ROOT = Path(__file__).resolve().parents[1]
TEST_ARTIFACTS = ROOT / "build" / "test-artifacts"
# Low enough that the briefly-trained tiny model yields detections to compare.
TEST_CONF = 0.05


@pytest.fixture(scope="session")
def tiny_artifacts() -> Path:
    from compress.pipeline import PROFILES, Context, run_stages

    ctx = Context(TEST_ARTIFACTS, PROFILES["tiny"])
    run_stages(ctx)  # the whole chain, tiny sizes (~3 minutes from scratch on 2 cores)
    return TEST_ARTIFACTS


@pytest.fixture(scope="session")
def tiny_onnx(tiny_artifacts) -> Path:
    from compress.manifest import Manifest

    return Manifest(tiny_artifacts).output("export", "onnx")


@pytest.fixture(scope="session")
def val_images(tiny_artifacts) -> list[Path]:
    return sorted((tiny_artifacts / "dataset" / "images" / "val").glob("*.jpg"))


@pytest.fixture(scope="session")
def photos() -> list[Path]:
    from ultralytics.utils import ASSETS

    return sorted(Path(ASSETS).glob("*.jpg"))


def copy_committed_repository(dest: Path) -> Path:
    from tools.build_repo import copy_python_models

    return copy_python_models(dest)


@pytest.fixture(scope="session")
def served_repo(tmp_path_factory, tiny_onnx) -> Path:
    from compress.export import read_info
    from tools import build_repo

    repo = copy_committed_repository(tmp_path_factory.mktemp("repo"))
    settings = build_repo.settings_for(read_info(tiny_onnx), conf_threshold=TEST_CONF, max_batch_size=8,
                                       preferred_batch_sizes=[4, 8],
                                       # every step waits 20 ms, so concurrent requests share execute() calls:
                                       # batching and per-request isolation are then really exercised
                                       queue_delay_us=20000, step_queue_delay_us=20000,
                                       # correctness tests on 2 busy cores: no load shedding here
                                       # (test_loadtest covers the rejecting queue policy)
                                       queue_timeout_us=0)
    return build_repo.build(repo, tiny_onnx, settings, {"stage": "export", "target": "local"})


@pytest.fixture(scope="session")
def triton(served_repo, tmp_path_factory):
    from tools.server import TritonServer

    server = TritonServer(served_repo, log_path=tmp_path_factory.mktemp("logs") / "server.log", exit_timeout_s=5)
    server.start()
    yield server
    server.stop()
