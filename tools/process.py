"""One shape for every process the toolkit starts (Triton, HAProxy, a replica's launcher).

    process = ManagedProcess("tritonserver", command, log_path=...).start()
    process.wait_until(is_ready, timeout_s=60, what="become ready")   # raises with the log's tail
    process.stop(timeout_s=20)                                        # signal, wait, then SIGKILL

A managed process dies with the thread that started it (`die_with_parent`), runs in its own
session when asked (a terminal's Ctrl-C then reaches only the toolkit, which stops it in order),
writes its output to a log file or keeps it in memory with the time each line arrived, and is
stopped in order: its signal (SIGTERM by default), a wait, then SIGKILL for its whole process
group, so nothing it forked outlives it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from compress.errors import ServerError

PR_SET_PDEATHSIG = 1


def die_with_parent(cpus: tuple[int, ...] | None = None):
    """A Popen `preexec_fn`: the child gets SIGTERM when the thread that started it dies (and,
    given `cpus`, runs on those cores only: its children inherit them).

    Without it a toolkit killed by SIGKILL or an OOM would leave its servers running with their
    ports bound. SIGTERM lets Triton drain and stop its Python stubs. Linux only; elsewhere
    returns None. The libc call is resolved before fork: nothing is loaded in the child.
    """
    if not sys.platform.startswith("linux"):
        return None if not cpus else (lambda: os.sched_setaffinity(0, cpus))
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)
        if cpus:
            os.sched_setaffinity(0, cpus)

    return preexec


class ManagedProcess:
    """A child process with a name, a log and an orderly stop."""

    def __init__(self, name: str, command: list[str], env: dict | None = None, cwd: Path | None = None,
                 log_path: Path | None = None, capture: bool = False, new_session: bool = True,
                 cpus: tuple[int, ...] | None = None):
        self.name, self.command, self.env, self.cwd = name, [str(c) for c in command], env, cwd
        self.cpus = tuple(cpus) if cpus else None  # None: the cores this process has
        self.log_path = Path(log_path) if log_path else None
        self.capture, self.new_session = capture, new_session
        self.process: subprocess.Popen | None = None
        self.started_at = 0.0  # time.monotonic() at start
        self._log = None
        self._lines: list[tuple[float, str]] = []  # (received at, epoch s; line) with capture
        self._reader: threading.Thread | None = None

    # -- life cycle -------------------------------------------------------------------------------

    def start(self) -> "ManagedProcess":
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")
        output = subprocess.PIPE if self.capture else (self._log or subprocess.DEVNULL)
        self.process = subprocess.Popen(self.command, env=self.env, cwd=self.cwd, stdout=output,
                                        stderr=subprocess.STDOUT, start_new_session=self.new_session,
                                        preexec_fn=die_with_parent(self.cpus), **({"text": True, "bufsize": 1}
                                                                         if self.capture else {}))
        self.started_at = time.monotonic()
        if self.capture:
            self._reader = threading.Thread(target=self._read, name=f"{self.name}-output", daemon=True)
            self._reader.start()
        return self

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def poll(self) -> int | None:
        return self.process.poll() if self.process else None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_until(self, check: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.1) -> float:
        """Block until `check()` is true; returns the seconds since start. Raises ServerError,
        with the tail of the log, when the process exits first or `timeout_s` (from the start) passes."""
        deadline = self.started_at + timeout_s
        while True:
            code = self.poll()
            if code is not None:
                if self._reader:
                    self._reader.join(timeout=2)
                raise ServerError(f"{self.name} exited with code {code} before it could {what}", hint=self.log_hint())
            if check():
                return time.monotonic() - self.started_at
            if time.monotonic() >= deadline:
                raise ServerError(f"{self.name} did not {what} within {timeout_s:.0f} s", hint=self.log_hint())
            time.sleep(poll_s)

    def send(self, signum: int = signal.SIGTERM) -> None:
        if self.running():
            self.process.send_signal(signum)

    def wait(self, timeout_s: float | None = None) -> int | None:
        """The exit code, or None if it is still running after `timeout_s`."""
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout_s: float = 10.0, signum: int = signal.SIGTERM) -> int | None:
        """`signum`, up to `timeout_s` for it to exit, then SIGKILL for its process group (whatever
        it forked); returns its exit code (None if it was never started)."""
        if self.process is None:
            return None
        code = self.process.poll()
        if code is None:
            self.process.send_signal(signum)
            code = self.wait(timeout_s)
        self.kill_group()
        if code is None:
            code = self.process.wait()
        if self._reader:
            self._reader.join(timeout=5)
        if self._log:
            self._log.close()
            self._log = None
        return code

    def kill_group(self) -> None:
        """SIGKILL the process and, in its own session, everything in its group."""
        if self.process is None:
            return
        try:
            if self.new_session:
                os.killpg(self.process.pid, signal.SIGKILL)
            elif self.process.poll() is None:
                self.process.kill()
        except (ProcessLookupError, PermissionError):
            pass  # already gone

    # -- output -----------------------------------------------------------------------------------

    def _read(self) -> None:
        for line in self.process.stdout:
            self._lines.append((time.time(), line.rstrip("\n")))

    def output(self) -> list[tuple[float, str]]:
        """With `capture`: everything it printed so far, with the time each line arrived."""
        return list(self._lines)

    def log_tail(self, lines: int = 3) -> list[str]:
        if self.capture:
            return [line for _, line in self._lines[-lines:]]
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace").strip().splitlines()[-lines:]
        return []

    def log_hint(self) -> str:
        tail = self.log_tail()
        where = f"log {self.log_path}: " if self.log_path else ""
        if not tail:
            return f"see {self.log_path}" if self.log_path else "run with a log file to see why"
        return where + " | ".join(tail)
