"""Process environment for offline, project-local runs, and the machine the work runs on.

Call `configure()` before importing ultralytics or torch: Ultralytics otherwise writes its
settings under ~/.config and pins OMP_NUM_THREADS=1 on import. The target is read, never
assumed: the cores this process may use, the device training runs on (`training_device`), the
threads a served detector instance gets (`serving_threads`), and the CPU's vector and matrix
extensions for every speed figure (`describe_machine`).
"""

from __future__ import annotations

import os
import platform
from contextlib import contextmanager
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = PROJECT_ROOT / ".cache"


def cpu_threads() -> int:
    from compress.detection import usable_cores

    return usable_cores()


def serving_threads(instances: int | None = None) -> int:
    """ONNX Runtime threads one of `instances` served detector instances gets on this machine
    (the repository's default instance count): what latency is measured at, so the report times
    models as the server will run them."""
    from compress.defaults import DEFAULT_DETECTOR_INSTANCES
    from compress.detection import share_of_cores

    return share_of_cores(instances or DEFAULT_DETECTOR_INSTANCES)


DEVICES = ("cpu", "gpu")


def training_device(requested: str | None = None) -> str:
    """The device Ultralytics trains and validates on: `requested` (DEVICE=cpu|gpu|<CUDA index>),
    else the first GPU when torch sees one, else the CPU. A GPU asked for but not seen is an error."""
    from compress.errors import MissingDependencyError, ToolkitError

    wanted = (requested or os.environ.get("DEVICE") or "").strip().lower()
    if wanted == "cpu":
        return "cpu"
    import torch

    available = torch.cuda.is_available()
    if wanted in ("", "auto"):
        return "0" if available else "cpu"
    if wanted == "gpu":
        wanted = "0"
    if not wanted.replace(",", "").isdigit():
        raise ToolkitError(f"DEVICE={requested or wanted} is not cpu, gpu or a CUDA device index")
    if not available:
        raise MissingDependencyError(f"DEVICE={requested or wanted} asks for a GPU, but torch sees none here",
                                     hint="use DEVICE=cpu, or run where `torch.cuda.is_available()` is true")
    return wanted


def configure() -> None:
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(CACHE_DIR / "ultralytics"))
    os.environ.setdefault("MPLCONFIGDIR", str(CACHE_DIR / "matplotlib"))
    os.environ.setdefault("OMP_NUM_THREADS", str(cpu_threads()))
    os.environ.setdefault("TQDM_MININTERVAL", "1")


@contextmanager
def telemetry_off():
    """OpenVINO's model converter and NNCF send usage telemetry unless the process says it runs in
    CI (openvino-telemetry's `CI=true`, NNCF's `NNCF_CI`): nothing here goes on the network."""
    saved = {name: os.environ.get(name) for name in ("CI", "NNCF_CI")}
    os.environ.update(CI="true", NNCF_CI="1")
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# (cpuinfo flag, name): the extensions ONNX Runtime's and oneDNN's INT8 and FP32 kernels choose between
EXTENSIONS = (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI"),
              ("avx512_bf16", "AVX-512 BF16"), ("amx_tile", "AMX"), ("amx_int8", "AMX-INT8"), ("amx_bf16", "AMX-BF16"))


def cpu_flags(cpuinfo: str) -> tuple[str, set[str]]:
    """(model name, flags) from /proc/cpuinfo's text (x86 "flags", Arm "Features")."""
    model, flags = "", set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features"):
            flags |= set(value.split())
    return model, flags


def _amx_from_torch() -> set[str]:
    """AMX as torch's cpuinfo sees it (CPUID and the OS's permission), for kernels that list no amx
    flags in /proc/cpuinfo; empty without torch."""
    try:
        import torch.cpu
    except ImportError:
        return set()
    try:
        return {"amx_tile", "amx_int8"} if torch.cpu._is_amx_tile_supported() else set()
    except Exception:  # a private call: absent on other torch builds
        return set()


def describe_machine(cpuinfo: str | None = None) -> dict:
    """The CPU a speed figure was measured on: ratios differ between CPUs for the same files."""
    import onnxruntime

    this_machine = cpuinfo is None
    if this_machine:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    model, flags = cpu_flags(cpuinfo)
    if this_machine and "amx_tile" not in flags and "avx512f" in flags:
        flags |= _amx_from_torch()
    extensions = [name for flag, name in EXTENSIONS if flag in flags]
    return {"cpu": model or platform.processor() or "unknown", "cores": cpu_threads(), "vector_extensions": extensions,
            "onnxruntime": onnxruntime.__version__, "onnxruntime_providers": onnxruntime.get_available_providers(),
            "python": platform.python_version()}


def machine_line(machine: dict | None) -> str:
    """One markdown line naming the machine a result was measured on ("" for older results without one)."""
    if not machine:
        return ""
    extensions = ", ".join(machine.get("vector_extensions") or []) or "no AVX2"
    accelerators = [p.removesuffix("ExecutionProvider") for p in machine.get("onnxruntime_providers") or []
                    if p in ("CUDAExecutionProvider", "TensorrtExecutionProvider")]
    return (f"Machine: {machine.get('cpu')}, {machine.get('cores')} cores ({extensions}), "
            f"ONNX Runtime {machine.get('onnxruntime')}" + (f" with {', '.join(accelerators)}" if accelerators else "")
            + ".")
