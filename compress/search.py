"""The search for the fastest candidate within the user's accuracy budget.

Latency is cheap to know and accuracy is not: every candidate's architecture (pruned, activation
swapped, INT8) is timed before any training, so the search knows how fast each one would be, and
training (the expensive part) is spent only on candidates that could beat the fastest one already
known to fit the budget. Accuracy falls with pruning depth for one activation, so per activation
the search bisects the depths still worth trying, then interpolates between the deepest fit and
the shallowest miss: a depth that fits makes every shallower one of that activation slower
without need, and a depth over budget by more than the noise rules out every deeper one. Candidates the time limit did not reach are listed as "not tried (time)".

Input size is a third dimension: each activation at each size is a group of its own, searched
the same way, and accuracy is taken to fall as the input shrinks as it does with depth: a clear
miss also rules out the same activation at every smaller size and equal or deeper pruning.

This module is pure logic over `Probe` rows and two callables (train-and-evaluate, estimated
training seconds), so its decisions are unit-tested without training anything.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from compress.budget import FITS, OVER, fits, points_below

# mAP50-95 points two trainings of the same candidate may differ by with another seed: a depth
# over the budget by less than this does not rule out deeper ones.
NOISE_POINTS = 0.5

OPEN = "open"
INFERRED_OVER = "not tried: a shallower depth is over budget beyond the noise"
CANNOT_WIN = "not tried: no faster than a candidate that fits"
NO_TIME = "not tried (time)"
SIZE_TRAINED = 1 << 30  # a group's size key for the trained size: above every smaller size searched


@dataclass
class Probe:
    """What the search knows of one candidate."""

    name: str
    activation: str
    depth: float  # MACs reduction the pruning aimed for (1.0: unpruned)
    trained: bool  # False: no training needed (INT8 of the equal-budget model)
    bs1_ms: float  # latency of its INT8 architecture, measured before training (fastest decile)
    bs8_ms: float
    status: str = OPEN
    map50_95: float | None = None
    drop_points: float | None = None  # below the reference, in points (negative: better)
    seconds: float | None = None  # what training and evaluating it took
    order: int | None = None  # position in the search (0 = first)
    note: str = ""
    imgsz: int | None = None  # its input size; None: the trained size (the largest searched)

    @property
    def group(self) -> tuple[str, int]:
        """(activation, size): the candidates one depth bisection runs over."""
        return self.activation, self.imgsz or SIZE_TRAINED

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class SearchResult:
    probes: list[Probe]
    budget_points: float
    reference_map: float
    seconds_limit: float
    seconds_spent: float = 0.0
    log: list[str] = field(default_factory=list)

    def fitting(self) -> list[Probe]:
        return [p for p in self.probes if p.status == FITS]

    def best(self) -> Probe | None:
        fitting = self.fitting()
        return min(fitting, key=lambda p: p.bs1_ms) if fitting else None


def _ruled_out_by(miss: Probe, other: Probe) -> bool:
    """A clear miss rules out what is deeper at its size, and as deep or deeper at a smaller size.
    The reference's INT8 fed a smaller input than it was trained for says nothing of students
    fine-tuned at that size: it rules out only the reference's INT8 at smaller sizes still."""
    if other.activation != miss.activation:
        return False
    miss_size, size = miss.group[1], other.group[1]
    if not miss.trained and miss.imgsz is not None:
        return not other.trained and size < miss_size
    return (size == miss_size and other.depth > miss.depth) or (size < miss_size and other.depth >= miss.depth)


def _infer(probes: list[Probe]) -> None:
    """Mark what the measured ones imply: deeper than a clear miss of the same activation and
    size (or smaller and as deep) is over budget; anything no faster than the fastest fitting
    candidate cannot win."""
    for miss in (p for p in probes if p.status == OVER and p.note == "beyond noise"):
        for other in probes:
            if other.status == OPEN and _ruled_out_by(miss, other):
                other.status = INFERRED_OVER
    fitting = [p for p in probes if p.status == FITS]
    if fitting:
        fastest = min(p.bs1_ms for p in fitting)
        for other in probes:
            if other.status == OPEN and other.bs1_ms >= fastest:
                other.status = CANNOT_WIN


def _by_speed(probes: list[Probe]) -> list[tuple[str, int]]:
    """Groups (activation, size), fastest first: by their mean architecture latency over the
    depths they share."""
    trained = [p for p in probes if p.trained]
    groups = sorted({p.group for p in trained})
    shared = set.intersection(*({p.depth for p in trained if p.group == g} for g in groups))

    def mean_ms(group: tuple[str, int]) -> float:
        values = [p.bs1_ms for p in trained if p.group == group and (p.depth in shared or not shared)]
        return sum(values) / len(values)

    return sorted(groups, key=mean_ms)


def next_probe(probes: list[Probe], budget_points: float) -> Probe | None:
    """Untrained candidates first (they cost no training). Then one activation (at one input
    size) at a time, the fastest at equal depth first: its unpruned student first (the safe end: if anything of that
    activation fits, this does, and a clear miss there rules out every depth), then the depth the
    measured points of that activation predict:
    - between its deepest fit and shallowest miss, where the line through them crosses the
      budget (accuracy falls smoothly with depth; the untrained INT8 of the unpruned model stands
      in for a fit at 1x until a student there is measured);
    - with no miss yet, the middle of its open depths (bisection);
    - with no fit of its own while another activation already fits, its shallowest open depth:
      what is open there is only what would beat that fit, and the shallowest is the likeliest
      to fit (a clear miss there rules out the rest)."""
    open_ = [p for p in probes if p.status == OPEN]
    if not open_:
        return None
    cheap = [p for p in open_ if not p.trained]
    if cheap:
        return min(cheap, key=lambda p: p.bs1_ms)
    group = next(g for g in _by_speed(probes) if any(p.group == g for p in open_))
    depths = sorted((p for p in open_ if p.group == group), key=lambda p: p.depth)
    measured = [p for p in probes if p.drop_points is not None and p.trained and p.group == group]
    if not measured and depths[0].depth == 1.0:
        return depths[0]  # the unpruned student: the safe end of this activation, cheapest to fit
    fitting = [p for p in measured if p.status == FITS]
    misses = [p for p in measured if p.status == OVER]
    if not fitting and any(p.status == FITS and p.trained for p in probes):
        return depths[0]
    anchor = max(fitting, key=lambda p: p.depth) if fitting else next(
        (p for p in probes if not p.trained and p.status == FITS and p.group[1] == group[1]), None)
    if anchor is None or not misses:
        return depths[(len(depths) - 1) // 2]
    miss = min(misses, key=lambda p: p.depth)
    slope = (miss.drop_points - anchor.drop_points) / max(miss.depth - anchor.depth, 1e-6)
    target = anchor.depth + (budget_points - anchor.drop_points) / slope if slope > 0 else miss.depth
    return min(depths, key=lambda p: (abs(p.depth - target), p.depth))


def run_search(probes: list[Probe], train_and_evaluate: Callable[[Probe], float], reference_map: float,
               budget_points: float, seconds_limit: float, estimate_seconds: Callable[[Probe], float],
               log: Callable[[str], None] = print, clock: Callable[[], float] = time.perf_counter) -> SearchResult:
    """Decide, train and evaluate probes until none is left open; `train_and_evaluate` returns the
    candidate's INT8 mAP50-95 (cached candidates return at once)."""
    result = SearchResult(probes, budget_points, reference_map, seconds_limit)
    start, order = clock(), 0
    while True:
        _infer(probes)
        probe = next_probe(probes, budget_points)
        if probe is None:
            break
        spent = clock() - start
        needed = estimate_seconds(probe)
        if probe.trained and spent + needed > seconds_limit:
            probe.status, probe.note = NO_TIME, f"needs ~{needed / 60:.1f} min, {max(seconds_limit - spent, 0) / 60:.1f} left"
            result.log.append(f"{probe.name}: {probe.status}, {probe.note}")
            log(f"    search: {probe.name}: {probe.status} ({probe.note})")
            continue
        log(f"    search: trying {probe.name} (architecture {probe.bs1_ms:.2f} ms at batch 1"
            + (f", ~{needed / 60:.1f} min of training)" if probe.trained else ", no training)"))
        begun = clock()
        probe.map50_95 = train_and_evaluate(probe)
        probe.seconds = round(clock() - begun, 1)
        probe.order, order = order, order + 1
        probe.drop_points = points_below(reference_map, probe.map50_95)
        if fits(probe.drop_points, budget_points):
            probe.status = FITS
        else:
            over = probe.drop_points - budget_points
            probe.status, probe.note = OVER, ("beyond noise" if over > NOISE_POINTS else "within noise")
        line = (f"{probe.name}: mAP50-95 {probe.map50_95:.4f}, {probe.drop_points:+.2f} points vs the reference "
                f"(budget {budget_points:g}): {probe.status}" + (f" ({probe.note})" if probe.note else ""))
        result.log.append(line)
        log(f"    search: {line}")
    result.seconds_spent = round(clock() - start, 1)
    return result
