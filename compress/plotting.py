"""One way to draw a report's plot: headless (Agg), saved as PNG, always closed."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path


@contextmanager
def saved_figure(path: Path, columns: int = 1, size: tuple[float, float] = (9, 4)):
    """Yields (figure, axes); on a clean exit lays it out and writes `path`."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, columns, figsize=size)
    try:
        yield fig, axes
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
