"""One family of user-facing errors, caught once at each CLI edge and printed as one line.

Raise a subclass of `ToolkitError` for anything the user can fix (a path, an image, a model,
a missing optional dependency). Internal bugs stay ordinary exceptions with tracebacks.
"""

from __future__ import annotations

import functools
import signal
import sys
import threading
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable[..., object])


class ToolkitError(Exception):
    """Something the user can fix. `hint` says how."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        message = super().__str__()
        return f"{message} ({self.hint})" if self.hint else message


class InputFileError(ToolkitError):
    """A missing or unreadable file or folder."""


class BadImageError(ToolkitError):
    """An image that cannot be decoded, or an input of the wrong shape or type."""


class UnsupportedModelError(ToolkitError):
    """Weights or a graph this toolkit cannot handle."""


class MissingDependencyError(ToolkitError):
    """An optional component (TensorRT, Docker, ...) that is not installed here."""


class ServerError(ToolkitError):
    """The Triton server could not be started, reached or did not answer as expected."""


class ServerBusyError(ServerError):
    """The server shed the request (queue full or queue timeout: HTTP 503 / gRPC UNAVAILABLE)."""


class GateFailedError(ToolkitError):
    """A measured quality gate did not hold."""

    exit_code = 3


class WeakBaselineError(GateFailedError):
    """The model to compress scores too low to make compressing it meaningful."""


def require_file(path, what: str = "file"):
    """Return `path` as a Path if it exists, else raise a readable InputFileError."""
    from pathlib import Path

    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{what} not found: {path}")
    return path


class Terminated(BaseException):
    """SIGTERM or SIGHUP, raised like KeyboardInterrupt so `with` blocks (servers, subprocesses) unwind.

    A BaseException, so `except Exception` handlers do not swallow it.
    """

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum, _frame):
    raise Terminated(signum)


def raise_on_termination() -> None:
    """Turn SIGTERM/SIGHUP into `Terminated` (main thread only: Python delivers signals there)."""
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, _raise_terminated)


def cli_entry(func: F) -> F:
    """Wrap a CLI `main`: a ToolkitError becomes one line on stderr and its exit code.

    SIGTERM/SIGHUP (systemd, a container runtime, a CI timeout, a closed terminal) unwind the
    program like Ctrl-C does, so every server and subprocess it started is stopped on the way out.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        raise_on_termination()
        try:
            return func(*args, **kwargs)
        except ToolkitError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(error.exit_code)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        except Terminated as stop:
            print(f"stopped by {stop}", file=sys.stderr)
            sys.exit(128 + stop.signum)

    return wrapper  # type: ignore[return-value]
