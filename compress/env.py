"""Process environment for offline, project-local, 2-core friendly runs.

Call `configure()` before importing ultralytics or torch: Ultralytics otherwise writes its
settings under ~/.config and pins OMP_NUM_THREADS=1 on import.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = PROJECT_ROOT / ".cache"


def cpu_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def configure() -> None:
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(CACHE_DIR / "ultralytics"))
    os.environ.setdefault("MPLCONFIGDIR", str(CACHE_DIR / "matplotlib"))
    os.environ.setdefault("OMP_NUM_THREADS", str(cpu_threads()))
    os.environ.setdefault("TQDM_MININTERVAL", "1")
