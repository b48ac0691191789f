"""Importing the toolkit must not gevent-patch the process (locust does so on import).

A patched process turns threads into greenlets: a blocking gRPC call then starves every other
"thread", which hung the drain test and would hang any user code mixing threads and gRPC.
"""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_toolkit_modules_do_not_import_locust():
    code = ("import sys; import loadtest.run, loadtest.capacity, loadtest.soak, loadtest.robustness, loadtest.peer, "
            "tools.client, tools.demo, tools.server; "
            "bad = [m for m in ('locust', 'gevent.monkey') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "YOLO_OFFLINE": "1",
                               "YOLO_CONFIG_DIR": str(ROOT / ".cache" / "ultralytics")})
    assert done.returncode == 0, done.stdout + done.stderr[-1500:]
