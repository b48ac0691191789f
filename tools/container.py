"""The server image and how it runs: build context, `docker build`, `docker run` with safe defaults.

    python -m tools.container context --repo model_repository   # assemble + check the build context
    python -m tools.container build --repo model_repository      # `make image` (needs Docker)
    python -m tools.container serve --repo model_repository      # `make serve-docker` (needs Docker)
    python -m tools.container build --image loadtest --images F  # `make image-loadtest`: Locust + frames

The image (deploy/docker/Dockerfile) is the pinned NGC tritonserver with the Python models'
dependencies installed at build time and the repository baked in read-only. It serves
repositories built for TARGET=onnxruntime, openvino or tensorrt; a `local` one (ONNX Runtime inside a
Python model) is refused here and by the image's entrypoint with one message.

`serve` binds the ports to 127.0.0.1 unless `--host` says otherwise; beyond loopback, the
repository, config, shared-memory, statistics, trace and logging APIs need the admin key
(Triton's restricted APIs). /dev/shm is sized from the repository's max batch and image size.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import shutil
import subprocess
from pathlib import Path

from compress.env import CACHE_DIR, PROJECT_ROOT
from compress.errors import InputFileError, MissingDependencyError, ToolkitError, cli_entry
from compress.manifest import val_image_list
from tools import triton_config as tc
from tools.repository import RepositoryRecord
from tools.server import LOOPBACK

DOCKER_DIR = PROJECT_ROOT / "deploy" / "docker"
CONTEXT_FILES = ("Dockerfile", "entrypoint.sh", "requirements-python-models.txt")
LOADTEST_CONTEXT_FILES = {"loadtest.Dockerfile": "Dockerfile", "requirements-loadtest.txt": "requirements-loadtest.txt"}
LOADTEST_PACKAGES = ("compress", "tools", "loadtest")  # the load test's own layers, nothing else
IMAGE_TAG = "yolo-triton:0.1"
LOADTEST_TAG = "yolo-triton-loadtest:0.1"
MAX_FRAMES = 64  # the locustfile cycles through at most this many
IMAGE_TARGETS = ("onnxruntime", "openvino", "tensorrt")  # the NGC image's own backends
PORTS = (8000, 8001, 8002)  # HTTP, gRPC, metrics inside the container
ADMIN_KEY_FILE = CACHE_DIR / "triton-admin-key"
ADMIN_KEY_VARIABLE = "TRITON_ADMIN_KEY"  # what deploy/docker/entrypoint.sh reads
SHM_FLOOR_BYTES = 256 * 2**20
SHM_MARGIN = 2  # inputs and outputs of a step are alive at once, plus the next batch queued


class ContainerError(ToolkitError):
    """A repository or setting the container cannot serve."""


def check_target(repo: Path) -> RepositoryRecord:
    """The repository's record, if its target is one this image serves; else one clear error."""
    record = RepositoryRecord.load(repo)
    target = record.target
    if target not in IMAGE_TARGETS:
        raise ContainerError(f"{repo} was built for target {target!r}; the container serves "
                             f"{', '.join(IMAGE_TARGETS[:-1])} or {IMAGE_TARGETS[-1]} (its detector runs in Triton's own "
                             "backends)",
                             hint="rebuild with `make repo TARGET=onnxruntime` (or use `make serve` for the local server)")
    return record


def shm_size_bytes(settings: tc.RepositorySettings) -> int:
    """/dev/shm for the Python steps: Triton hands their tensors over in shared memory.

    Per step instance, one full batch of what it reads and writes (pixels into the detector:
    1 byte each as uint8, 4 as float32; head outputs into the postprocess), times SHM_MARGIN; at
    least 256 MB, rounded up to 64 MB. Docker's default of 64 MB is below one 16 x 640 px batch
    of float32 pixels (79 MB).
    """
    height, width = settings.image_size
    pixels = settings.max_batch_size * 3 * height * width * (1 if settings.pixel_type == "uint8" else 4)
    head = settings.max_batch_size * sum(math.prod(dims) for _, dims in settings.head_outputs()) * 4
    # with shadow parity, postprocess reads the pixels too
    post = head + (pixels if settings.shadow else 0)
    need = SHM_MARGIN * (settings.preprocess_instances * pixels + settings.postprocess_instances * post)
    return max(SHM_FLOOR_BYTES, math.ceil(need / (64 * 2**20)) * 64 * 2**20)


def copied_sources(dockerfile: Path) -> list[str]:
    """The context paths the Dockerfile's COPY/ADD instructions read (flags and destination dropped)."""
    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(path=str(dockerfile))
    sources = []
    for instruction in parser.structure:
        if instruction["instruction"] in ("COPY", "ADD"):
            words = [w for w in instruction["value"].split() if not w.startswith("--")]
            sources += words[:-1]
    return sources


def missing_from_context(context: Path) -> list[str]:
    return [source for source in copied_sources(context / "Dockerfile") if not (context / source).exists()]


def build_context(repo: Path, out: Path) -> Path:
    """Dockerfile, entrypoint, pinned requirements and the built repository in one folder, checked."""
    check_target(repo)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name in CONTEXT_FILES:
        shutil.copy2(DOCKER_DIR / name, out / name)
    # the probes' stub check (standard library only): readiness and liveness in Kubernetes
    shutil.copy2(PROJECT_ROOT / "tools" / "stub_health.py", out / "stub_health.py")
    shutil.copytree(repo, out / "model_repository", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    missing = missing_from_context(out)
    if missing:
        raise InputFileError(f"the build context {out} lacks what the Dockerfile copies: {', '.join(missing)}")
    return out


def build_loadtest_context(images: list[Path], out: Path) -> Path:
    """The load-test image's context: the three packages, pinned requirements and the frames."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for source, name in LOADTEST_CONTEXT_FILES.items():
        shutil.copy2(DOCKER_DIR / source, out / name)
    for package in LOADTEST_PACKAGES:
        shutil.copytree(PROJECT_ROOT / package, out / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (out / "frames").mkdir()
    for index, image in enumerate(images[:MAX_FRAMES]):
        shutil.copy2(image, out / "frames" / f"{index:03d}{image.suffix.lower()}")
    missing = missing_from_context(out)
    if missing:
        raise InputFileError(f"the build context {out} lacks what the Dockerfile copies: {', '.join(missing)}")
    return out


def check_docker() -> None:
    """Docker CLI present and its daemon reachable, else one message saying what to install."""
    hint = ("install Docker Engine (and the NVIDIA Container Toolkit for GPUs) where you build and serve; "
            "here, `make serve` runs the same repository on the local tritonserver")
    if shutil.which("docker") is None:
        raise MissingDependencyError("docker is not installed here", hint=hint)
    probe = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                           timeout=30)
    if probe.returncode != 0 or not probe.stdout.strip():
        raise MissingDependencyError("the docker CLI is here but no Docker daemon answers", hint=hint)


def admin_key() -> str:
    """TRITON_ADMIN_KEY, else a key made once and kept in .cache (mode 0600)."""
    if os.environ.get(ADMIN_KEY_VARIABLE):
        return os.environ[ADMIN_KEY_VARIABLE]
    if not ADMIN_KEY_FILE.exists():
        ADMIN_KEY_FILE.parent.mkdir(parents=True, exist_ok=True)
        ADMIN_KEY_FILE.write_text(secrets.token_urlsafe(24))
        ADMIN_KEY_FILE.chmod(0o600)
    return ADMIN_KEY_FILE.read_text().strip()


def docker_run_command(repo: Path, image: str = IMAGE_TAG, host: str = LOOPBACK, gpus: bool = False,
                       mount: bool = True, key: str | None = None) -> list[str]:
    """`docker run` for the image: loopback ports by default, /dev/shm sized from the repository,
    read-only root filesystem, no capabilities, the admin key required beyond loopback.

    The key itself is not in the command (it would show in `ps`): `-e TRITON_ADMIN_KEY` hands the
    caller's environment variable to the entrypoint, which turns it into Triton's flags.
    """
    settings = check_target(repo).settings
    shm_mb = shm_size_bytes(settings) // 2**20
    command = ["docker", "run", "--rm", "--init", "--name", "yolo-triton", f"--shm-size={shm_mb}m",
               "--read-only", "--tmpfs", "/tmp:rw,size=64m", "--cap-drop", "ALL",
               "--security-opt", "no-new-privileges"]
    for port in PORTS:
        command += ["-p", f"{host}:{port}:{port}"]
    if gpus:
        command += ["--gpus", "all"]
    if mount:  # the repository as built here, over the baked one, read-only
        command += ["-v", f"{Path(repo).resolve()}:/models:ro"]
    if host != LOOPBACK:
        if not key:
            raise ContainerError("listening beyond loopback needs an admin key for the restricted APIs")
        command += ["-e", ADMIN_KEY_VARIABLE]
    command.append(image)
    return command


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["context", "build", "serve"])
    parser.add_argument("--image", choices=["server", "loadtest"], default="server")
    parser.add_argument("--images", type=Path, help="loadtest image: frames (folder or .txt list; default: the "
                                                    "dataset's val split)")
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--repo", type=Path, default=Path("model_repository"))
    parser.add_argument("--context", type=Path, default=Path("build/image-context"))
    parser.add_argument("--tag", default=IMAGE_TAG)
    parser.add_argument("--host", default=LOOPBACK, help="address the ports bind to (beyond loopback: admin key)")
    parser.add_argument("--gpus", action="store_true", help="serve: pass --gpus all")
    parser.add_argument("--baked", action="store_true", help="serve: the repository baked into the image, no mount")
    args = parser.parse_args(argv)
    if args.action in ("context", "build"):
        if args.image == "loadtest":
            from tools.client import collect_images

            frames = args.images or val_image_list(args.artifacts)
            make_context = lambda: build_loadtest_context(collect_images([frames]), args.context)  # noqa: E731
            tag = LOADTEST_TAG if args.tag == IMAGE_TAG else args.tag
        else:
            check_target(args.repo)
            make_context, tag = (lambda: build_context(args.repo, args.context)), args.tag
        if args.action == "build":
            check_docker()
        make_context()
        print(f"build context ready: {args.context} (every file the Dockerfile copies is there)")
        if args.action == "build":
            subprocess.run(["docker", "build", "-t", tag, str(args.context)], check=True)
            print(f"built {tag}")
        return
    key = admin_key() if args.host != LOOPBACK else None
    command = docker_run_command(args.repo, args.tag, args.host, args.gpus, not args.baked, key)
    check_docker()
    if key:
        where = f"${ADMIN_KEY_VARIABLE}" if os.environ.get(ADMIN_KEY_VARIABLE) else str(ADMIN_KEY_FILE)
        print(f"listening on {args.host}: the operator APIs (repository, config, ...) need the header "
              f"'admin-key' over HTTP, 'triton-grpc-protocol-admin-key' over gRPC (value in {where})")
    os.execvpe("docker", command, {**os.environ, **({ADMIN_KEY_VARIABLE: key} if key else {})})


if __name__ == "__main__":
    main()
