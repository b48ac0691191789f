"""Where the server and the load generator run during a measurement: the same cores, or apart.

shared: the server and Locust on every core this process may use. The load generator's CPU
(JPEG encoding, gRPC, Python) then counts against the server: a conservative figure, and the
only one a 1-core machine can give.
isolated: the load generator (this process, Locust and its workers) pinned to the last
CLIENT_CORES cores, the server to the rest: what a replica with that many cores holds when
the cameras are elsewhere, which is how a cluster runs it.

Pinning is by CPU affinity (sched_setaffinity), inherited by every child: the server's steps
size their thread pools from the affinity they see (compress.detection.usable_cores), so the
isolated server runs as a replica with that many cores would.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from compress.errors import ToolkitError

PLACEMENTS = ("shared", "isolated")
CLIENT_CORES = 1  # one core drives the streams one replica of this size holds (its CPU is measured)


@dataclass(frozen=True)
class Placement:
    name: str
    server_cpus: tuple[int, ...]
    client_cpus: tuple[int, ...]

    def record(self) -> dict:
        return {"name": self.name, "server_cpus": list(self.server_cpus), "client_cpus": list(self.client_cpus)}

    def describe(self) -> str:
        if self.name == "shared":
            return f"server and load generator share cores {_cores(self.server_cpus)}"
        return f"server on cores {_cores(self.server_cpus)}, load generator on {_cores(self.client_cpus)}"


def _cores(cpus: tuple[int, ...]) -> str:
    return ",".join(map(str, cpus))


def available_cpus() -> tuple[int, ...]:
    return tuple(sorted(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else tuple(range(os.cpu_count() or 1))


def placement(name: str, cpus: tuple[int, ...] | None = None, client_cores: int = CLIENT_CORES) -> Placement:
    cpus = cpus or available_cpus()
    if name == "shared":
        return Placement("shared", cpus, cpus)
    if name != "isolated":
        raise ToolkitError(f"unknown placement {name!r}", hint=f"use one of {', '.join(PLACEMENTS)}")
    if not hasattr(os, "sched_setaffinity"):
        raise ToolkitError("isolating the load generator needs CPU affinity (Linux)", hint="use PLACEMENT=shared")
    if client_cores < 1 or len(cpus) <= client_cores:
        raise ToolkitError(f"isolating the load generator needs more than {client_cores} core(s); this process may "
                           f"use {len(cpus)}", hint="use PLACEMENT=shared here, or run Locust on another machine")
    return Placement("isolated", cpus[:-client_cores], cpus[-client_cores:])


def default_placements(cpus: tuple[int, ...] | None = None) -> list[str]:
    """Both, side by side, where there are cores to isolate; shared alone on one core."""
    return list(PLACEMENTS) if len(cpus or available_cpus()) > CLIENT_CORES else ["shared"]


@contextlib.contextmanager
def client_side(chosen: Placement):
    """This process (the load driver: Locust and the watcher are its children and threads) on the
    client's cores for the block; its affinity comes back afterwards."""
    if chosen.name == "shared" or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, chosen.client_cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
