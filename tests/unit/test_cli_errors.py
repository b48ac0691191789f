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
    (("tools.build_repo", "--artifacts", "no/such/artifacts"), "has passed the parity gate", 3),
    (("tools.build_repo", "--onnx", "README.md"), "not a readable ONNX model", 2),
    (("tools.client", "README.md", "--url", "127.0.0.1:9", "--protocol", "http"), "cannot reach Triton", 2),
])
def test_one_line_error(args, message, code):
    result = run_cli(*args)
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_docker_serve_without_docker_says_what_to_install(tmp_path):
    from tools.server import check_docker
    from tools.errors import MissingDependencyError

    try:
        check_docker()
    except MissingDependencyError:
        pass
    else:
        pytest.skip("a Docker daemon answers here; this checks the message where none does")
    result = run_cli("tools.server", "docker", "--repo", str(tmp_path))
    assert result.returncode == 2 and "docker" in result.stderr and "Traceback" not in result.stderr
    assert "NVIDIA Container Toolkit" in result.stderr
