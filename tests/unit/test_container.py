"""`make serve-docker`'s command, checked without Docker: what is exposed, how much /dev/shm,
and that the admin key never appears in the command line."""

from __future__ import annotations

import pytest

from tests.unit.test_cli_errors import container_repository
from tools import container


def test_loopback_by_default_with_sized_shm_and_no_key(tmp_path):
    repo = container_repository(tmp_path / "repo", "onnxruntime")
    command = container.docker_run_command(repo)
    ports = [command[i + 1] for i, word in enumerate(command) if word == "-p"]
    assert ports == ["127.0.0.1:8000:8000", "127.0.0.1:8001:8001", "127.0.0.1:8002:8002"]
    assert "--shm-size=256m" in command  # 128 px, batch 16: the 256 MB floor
    assert {"--read-only", "no-new-privileges"} <= set(command) and command[command.index("--cap-drop") + 1] == "ALL"
    assert f"{repo.resolve()}:/models:ro" in command and container.ADMIN_KEY_VARIABLE not in command


def test_beyond_loopback_needs_the_key_and_passes_it_by_environment(tmp_path):
    repo = container_repository(tmp_path / "repo", "onnxruntime")
    with pytest.raises(container.ContainerError, match="admin key"):
        container.docker_run_command(repo, host="0.0.0.0")
    command = container.docker_run_command(repo, host="0.0.0.0", key="s3cret")
    assert not any("s3cret" in word for word in command)  # `ps` would show it
    assert command[command.index("-e") + 1] == container.ADMIN_KEY_VARIABLE
    assert command.index("-e") < command.index(container.IMAGE_TAG)  # a docker option, not a server argument


def test_shm_grows_with_batch_and_image_size(tmp_path):
    from tools import triton_config as tc

    small = tc.RepositorySettings(image_size=(128, 128), num_classes=4, head_layout="raw", pixel_type="float32")
    large = tc.RepositorySettings(image_size=(640, 640), num_classes=80, head_layout="raw", max_batch_size=16,
                                  pixel_type="float32")
    assert container.shm_size_bytes(small) == 256 * 2**20
    assert container.shm_size_bytes(large) == 320 * 2**20  # 2 x (75 MiB pixels + 74 MiB head), 64 MiB steps
    as_bytes = tc.RepositorySettings(image_size=(640, 640), num_classes=80, head_layout="raw", pixel_type="uint8",
                                     preprocess_instances=2, postprocess_instances=2)
    assert container.shm_size_bytes(as_bytes) == 384 * 2**20  # 2 x (2 x 18.75 MiB + 2 x 73.8 MiB) = 370 MiB; float32 pixels: 640
