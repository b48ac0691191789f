"""Progress bars and stage lines, shared by every long-running step."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterable, Iterator, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """A tqdm bar on stderr; quiet enough for CI logs (updates at most twice a second)."""
    return iter(tqdm(items, desc=desc, total=total, file=sys.stderr, mininterval=0.5, leave=False))


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Print `==> name` before and `<== name (12.3 s)` after a stage."""
    print(f"==> {name}", flush=True)
    start = time.perf_counter()
    yield
    print(f"<== {name} ({time.perf_counter() - start:.1f} s)", flush=True)
