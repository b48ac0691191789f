"""User mistakes at the CLI edge: one readable line on stderr, a non-zero exit, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("args,message,code", [
    (("tools.client", "no/such/image.jpg"), "no such image or folder", 2),
    (("tools.client", "--local", "no/such.onnx", "tests"), "ONNX model not found", 2),
    (("compress.pipeline", "--weights", "missing.pt"), "WEIGHTS=missing.pt does not exist", 2),
    (("compress.pipeline", "--artifacts", "build/no-artifacts", "--data", "pytest.ini"), "is not a data.yaml", 2),
    (("compress.pipeline", "--artifacts", "build/no-artifacts", "--data", "tests/fixtures/bad_data.yaml"),
     "'val:' key missing", 2),
    (("compress.pipeline", "--imgsz", "100"), "not a positive multiple of 32", 2),
    (("compress.pipeline", "--kd-feature-weight", "-1"), "KD_FEATURE_WEIGHT=-1.0 is negative", 2),
    (("tools.build_repo", "--artifacts", "no/such/artifacts"), "has passed the parity gate", 3),
    (("tools.build_repo", "--onnx", "README.md"), "not a readable ONNX model", 2),
    (("tools.client", "README.md", "--url", "127.0.0.1:9", "--protocol", "http"), "cannot reach Triton", 2),
    (("compress.peer_bench", "--artifacts", "build/no-artifacts"), "no exported baseline", 2),
    (("compress.benchmark", "--worker", "--imgsz", "64", "model=no/such.onnx"), "ONNX model not found", 2),
])
def test_one_line_error(args, message, code):
    result = run_cli(*args)
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr


def container_repository(folder, target: str, tuned: dict | None = None, **settings):
    """What `make repo TARGET=...` records (the record alone: the container's checks and the
    planner read nothing else), with `settings` over a 128 px, 4-class raw-head detector."""
    from tools import triton_config as tc
    from tools.repository import RepositoryRecord

    folder.mkdir(parents=True, exist_ok=True)
    values = {"image_size": (128, 128), "num_classes": 4, "head_layout": "raw", **settings}
    RepositoryRecord(folder, "relu_1x", target, folder / "model.onnx", True, "0" * 16, "0" * 16,
                     tc.RepositorySettings(target=target, **values), tuned).save()
    return folder


@pytest.mark.parametrize("action", ["build", "serve"])
def test_image_build_and_serve_without_docker_say_what_to_install(tmp_path, action):
    from compress.errors import MissingDependencyError
    from tools.container import check_docker

    try:
        check_docker()
    except MissingDependencyError:
        pass
    else:
        pytest.skip("a Docker daemon answers here; this checks the message where none does")
    repo = container_repository(tmp_path / "repo", "onnxruntime")
    result = run_cli("tools.container", action, "--repo", str(repo), "--context", str(tmp_path / "context"))
    assert result.returncode == 2 and "docker" in result.stderr and "Traceback" not in result.stderr
    assert "install Docker Engine" in result.stderr


@pytest.mark.parametrize("action", ["context", "serve"])
def test_container_refuses_a_local_target_repository(tmp_path, action):
    repo = container_repository(tmp_path / "repo", "local")
    result = run_cli("tools.container", action, "--repo", str(repo), "--context", str(tmp_path / "context"))
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len(lines) == 1 and "built for target 'local'" in lines[0] and "TARGET=onnxruntime" in result.stderr
