"""The container's pieces that run without Docker: its entrypoint on the real tritonserver binary
(target check, admin key from a mounted file), Triton's restricted APIs, and complete build contexts."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT
from tests.unit.test_cli_errors import container_repository

pytestmark = pytest.mark.integration
ENTRYPOINT = ROOT / "deploy" / "docker" / "entrypoint.sh"
KEY = "s3cret-admin-key"


def entrypoint_env(tmp_path, repo, **extra) -> dict:
    """The image's environment, here: `tritonserver` on PATH is the wheel's real binary."""
    from tools.server import pytriton_paths

    paths = pytriton_paths()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if not (bin_dir / "tritonserver").exists():
        (bin_dir / "tritonserver").symlink_to(paths["binary"])
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "MODEL_REPOSITORY": str(repo),
            "LD_LIBRARY_PATH": str(paths["libs"]), **extra}


@pytest.mark.parametrize("target", ["local", None])
def test_entrypoint_refuses_what_the_image_cannot_serve(tmp_path, target):
    repo = container_repository(tmp_path / "repo", target) if target else tmp_path
    result = subprocess.run(["bash", str(ENTRYPOINT)], env=entrypoint_env(tmp_path, repo), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "this image serves onnxruntime, openvino or tensorrt" in result.stderr
    assert ("target 'local'" if target else "not found") in result.stderr


@pytest.mark.parametrize("given_by", ["mounted file", "environment"])
def test_entrypoint_protects_operator_apis_with_the_admin_key(tmp_path, given_by):
    """Kubernetes mounts the key as a file; `make serve-docker` passes it as TRITON_ADMIN_KEY."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    from tools.server import ADMIN_HEADER, free_port

    repo = container_repository(tmp_path / "repo", "onnxruntime")  # no models: the server starts empty
    key_file = tmp_path / "admin-key"
    key_file.write_text(KEY)
    http, grpc, metrics = free_port(), free_port(), free_port()
    server = subprocess.Popen(
        ["bash", str(ENTRYPOINT), f"--http-port={http}", f"--grpc-port={grpc}", f"--metrics-port={metrics}",
         "--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1",
         "--exit-timeout-secs=5"],
        env=entrypoint_env(tmp_path, repo, **({"ADMIN_KEY_FILE": str(key_file)} if given_by == "mounted file"
                                             else {"TRITON_ADMIN_KEY": KEY})), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    try:
        http_client = httpclient.InferenceServerClient(f"127.0.0.1:{http}")
        grpc_client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if http_client.is_server_live():
                    break
            except Exception:
                time.sleep(0.3)
        assert server.poll() is None, server.stderr.read()
        assert http_client.is_server_ready() and grpc_client.is_server_ready()  # health stays open
        # gRPC carries the key in the header `triton-grpc-protocol-admin-key`, HTTP in `admin-key`
        for client, header in ((http_client, ADMIN_HEADER), (grpc_client, f"triton-grpc-protocol-{ADMIN_HEADER}")):
            with pytest.raises(InferenceServerException):
                client.get_model_repository_index()
            client.get_model_repository_index(headers={header: KEY})  # accepted with the key
            with pytest.raises(InferenceServerException):
                client.get_model_repository_index(headers={header: "wrong"})
        http_client.close()
        grpc_client.close()
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            raise


def test_local_server_with_an_admin_key_loads_its_models_and_refuses_strangers(served_repo, tmp_path, val_images):
    from compress.errors import ServerError
    from tools.client import TritonDetectorClient
    from tools.server import TritonServer

    with TritonServer(served_repo, log_path=tmp_path / "server.log", admin_key=KEY) as server:
        with TritonDetectorClient(server.grpc_url, "grpc") as client:  # inference needs no key
            assert len(client.detect([val_images[0].read_bytes()])) == 1
        stranger = TritonServer(served_repo)
        stranger.http_port = server.http_port  # the same server, asked without the key
        with pytest.raises(ServerError, match="loading model 'yolo' failed"):
            stranger.load("yolo")  # the same request without the key
        server.load("yolo")  # with it


def test_build_contexts_hold_everything_their_dockerfiles_copy(tiny_onnx, tmp_path, val_images):
    from tools.container import missing_from_context

    repo = tmp_path / "repo"
    build = subprocess.run([sys.executable, "-m", "tools.build_repo", "--onnx", str(tiny_onnx), "--target",
                            "onnxruntime", "--repo", str(repo)], cwd=ROOT, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    context = tmp_path / "server"
    made = subprocess.run([sys.executable, "-m", "tools.container", "context", "--repo", str(repo), "--context",
                           str(context)], cwd=ROOT, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    assert missing_from_context(context) == []
    assert (context / "model_repository" / "detector" / "1" / "model.onnx").exists()
    assert (context / "model_repository" / "preprocess" / "1" / "yolo_ops.py").exists()
    (context / "entrypoint.sh").unlink()
    assert missing_from_context(context) == ["entrypoint.sh"]  # the check has teeth

    loadtest = tmp_path / "loadtest"
    made = subprocess.run([sys.executable, "-m", "tools.container", "context", "--image", "loadtest", "--images",
                           str(val_images[0].parent), "--context", str(loadtest)], cwd=ROOT, capture_output=True,
                          text=True)
    assert made.returncode == 0, made.stderr
    assert missing_from_context(loadtest) == [] and len(list((loadtest / "frames").iterdir())) >= 8
    # what the master and workers run imports from the context alone (the layers it needs are there)
    probe = subprocess.run([sys.executable, "-c", "import loadtest.run, loadtest.frames, tools.client; "
                            "print(loadtest.run.__file__)"], cwd=tmp_path, capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(loadtest)})
    assert probe.returncode == 0 and probe.stdout.startswith(str(loadtest)), probe.stderr
