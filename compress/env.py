"""Process environment for offline, project-local, 2-core friendly runs.

Call `configure()` before importing ultralytics or torch: Ultralytics otherwise writes its
settings under ~/.config and pins OMP_NUM_THREADS=1 on import.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = PROJECT_ROOT / ".cache"


def cpu_threads() -> int:
    from compress.detection import usable_cores

    return usable_cores()


def configure() -> None:
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(CACHE_DIR / "ultralytics"))
    os.environ.setdefault("MPLCONFIGDIR", str(CACHE_DIR / "matplotlib"))
    os.environ.setdefault("OMP_NUM_THREADS", str(cpu_threads()))
    os.environ.setdefault("TQDM_MININTERVAL", "1")


def describe_machine() -> dict:
    """The CPU a speed figure was measured on: ratios differ between CPUs for the same files."""
    import onnxruntime

    flags, model = set(), platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("unknown", "", "x86_64"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    extensions = [name for flag, name in (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_vnni", "AVX-512 VNNI"),
                                          ("avx_vnni", "AVX-VNNI"), ("amx_int8", "AMX-INT8")) if flag in flags]
    return {"cpu": model, "cores": cpu_threads(), "vector_extensions": extensions,
            "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}


def machine_line(machine: dict | None) -> str:
    """One markdown line naming the machine a result was measured on ("" for older results without one)."""
    if not machine:
        return ""
    extensions = ", ".join(machine.get("vector_extensions") or []) or "no AVX2"
    return (f"Machine: {machine.get('cpu')}, {machine.get('cores')} cores ({extensions}), "
            f"ONNX Runtime {machine.get('onnxruntime')}.")
