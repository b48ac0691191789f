"""Does every step of the served ensemble answer? Stub health for the launcher's readiness, and healing.

A Python-backend step answers only while its stub process lives. A stub killed (the kernel's
OOM killer, a crash in a native library) leaves Triton saying the server and every model are
ready, while every request reaching that step fails ("Stub process 'preprocess_0_0' is not
healthy"), and Triton restarts nothing by itself. So the launcher watches the stubs themselves:
every instance the loaded models' configs ask for must have a live stub under this tritonserver
(tools.stub_health, which the Kubernetes probes run too). That is a scan of the server's child processes every `poll_s`, off the request
path; a probe inference would queue behind real frames under load (a busy replica would look
dead) and cost a frame's compute each time.

`StubWatch` turns that into:
- health: false from the first poll that misses a stub (readiness turns 503 within `poll_s`),
  true again once every stub lives (the launcher's readiness also needs Triton's own);
- healing: the model whose stub died is unloaded and loaded again through the repository API
  (explicit model control; new stubs, the ensemble stays loaded), counted and logged in one line;
- giving up: a model reloaded more than `max_heals` times within `window_s` is left unready and
  `alive()` turns false, so whatever watches liveness (Kubernetes' liveness probe, a supervisor)
  restarts the whole replica.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from compress.errors import ServerError
from tools.stub_health import live_stubs, missing_stubs, python_steps



@dataclass(frozen=True)
class HealSettings:
    poll_s: float = 0.25
    max_heals: int = 3  # reloads of one model within window_s before the replica is given up
    window_s: float = 300.0


def expected_stubs(server, ensemble: str) -> dict[str, list[str]]:
    """{model: its instance names} of the ensemble's Python-backend steps, from the configs the
    server runs now (a reload with another instance count changes them)."""
    from tools.server import ADMIN_HEADER

    return python_steps(f"http://{server.http_url}", ensemble,
                        {ADMIN_HEADER: server.admin_key} if server.admin_key else None)


class StubWatch:
    """Watches the stubs of a running tools.server.TritonServer's ensemble and heals them (a thread)."""

    def __init__(self, server, ensemble: str = "yolo", settings: HealSettings = HealSettings(),
                 say: Callable[[str], None] = print, clock: Callable[[], float] = time.monotonic):
        self.server, self.ensemble, self.settings, self.say, self.clock = server, ensemble, settings, say, clock
        self.expected: dict[str, list[str]] = {}
        self.missing: dict[str, list[str]] = {}
        self.heals: dict[str, deque] = {}
        self.healed = 0
        self.given_up: str | None = None  # why the replica cannot heal itself, once it is so
        self._healthy = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="stub-watch", daemon=True)

    def healthy(self) -> bool:
        return self._healthy.is_set() and self.given_up is None

    def alive(self) -> bool:
        return self.given_up is None

    def start(self) -> "StubWatch":
        self.expected = expected_stubs(self.server, self.ensemble)
        self.check()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def check(self) -> dict[str, list[str]]:
        """One look: which stubs are missing now; health follows."""
        process = self.server.process
        missing = missing_stubs(self.expected, live_stubs(process.pid) if process else set())
        self.missing = missing
        if missing:
            self._healthy.clear()
        else:
            self._healthy.set()
        return missing

    def heal(self) -> bool:
        """Reload every model with a missing stub (at most `max_heals` per model within `window_s`);
        true when every stub lives again."""
        with self._lock:
            for model, instances in self.check().items():
                if self.given_up:
                    break
                recent = self.heals.setdefault(model, deque())
                now = self.clock()
                while recent and now - recent[0] > self.settings.window_s:
                    recent.popleft()
                if len(recent) >= self.settings.max_heals:
                    self.given_up = (f"{model} died {len(recent) + 1} times within {self.settings.window_s:g} s: "
                                     "left unready, liveness failing so the replica is restarted")
                    self.say(f"heal: {self.given_up}")
                    break
                recent.append(now)
                started = self.clock()
                try:
                    self.server.reload(model)
                except ServerError as error:
                    self.say(f"heal: reloading {model} failed: {error}")
                    continue
                self.healed += 1
                self.say(f"heal: stub {', '.join(instances)} of {model} died; reloaded {model} in "
                         f"{self.clock() - started:.1f} s (heal {self.healed}; {model}: {len(recent)} of at most "
                         f"{self.settings.max_heals} in {self.settings.window_s:g} s)")
            return not self.check() and self.given_up is None

    def stop_healed(self) -> None:
        """Stop watching, with every stub alive if it can be: a stub dead when Triton stops makes
        it exit 1 (the launcher's drain runs this just before stopping it)."""
        self.stop()
        if self.check() and self.given_up is None:
            self.heal()

    def _run(self) -> None:
        while not self._stop.wait(self.settings.poll_s):
            if self.check() and self.given_up is None:
                try:  # the configs may have changed (a reload with other instance counts): not a death
                    self.expected = expected_stubs(self.server, self.ensemble)
                except OSError:
                    pass
                if self.check():
                    self.heal()
