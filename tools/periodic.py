"""Sampling something every few seconds while a run lasts, and reading how long a run lasts.

Shared by the load tests (loadtest/) and the live watch (tools.watch), which sits below them.
"""

from __future__ import annotations

import threading
import time

from compress.errors import ToolkitError


class PeriodicSampler:
    """Calls `sample()` every `interval_s` in a thread while entered, keeping (time, value) pairs.

    A sample that raises (an endpoint or a process that just went away, a scrape cut short) is
    skipped and counted: the thread outlives it, so a run never goes on with stale samples unsaid.
    """

    def __init__(self, interval_s: float = 1.0, final_sample: bool = False):
        self.interval_s, self.final_sample = interval_s, final_sample
        self.samples: list[tuple[float, object]] = []
        self.errors, self.last_error = 0, ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self):
        raise NotImplementedError

    def _take(self) -> None:
        try:
            self.samples.append((time.time(), self.sample()))
        except Exception as error:  # noqa: BLE001 - one bad sample must not end the sampling
            self.errors += 1
            self.last_error = f"{type(error).__name__}: {error}"

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._take()
            self._stop.wait(self.interval_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if self.final_sample:
            self._take()


def parse_duration(text) -> float:
    text = str(text).strip()
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        seconds = float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)
    except (ValueError, IndexError):
        raise ToolkitError(f"cannot read duration {text!r}", hint="use e.g. 30s, 2m or 45") from None
    if seconds <= 0:
        raise ToolkitError(f"duration {text!r} is not positive")
    return seconds
