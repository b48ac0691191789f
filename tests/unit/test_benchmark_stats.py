"""The benchmark's statistics: per-round speed-ups and a verdict that respects the noise."""

from __future__ import annotations

import numpy as np

from compress.benchmark import spread, speedup, verdict


def test_speedup_is_taken_round_by_round():
    # a slow round hits both models alike; per-round ratios stay at 2.0 where medians would not pair
    baseline = [10.0, 30.0, 10.0, 10.0]
    model = [5.0, 15.0, 5.0, 5.0]
    latency = {"base": {"bs1_rounds": baseline}, "fast": {"bs1_rounds": model}}
    ratio = speedup(latency, "base", "fast", 1)
    assert ratio["median"] == ratio["p10"] == ratio["p90"] == 2.0


def test_verdict_needs_the_target_to_hold_beyond_the_noise():
    rng = np.random.default_rng(0)
    assert verdict(spread(rng.normal(2.4, 0.05, 60)), 2.0) == "met"
    assert verdict(spread(rng.normal(1.6, 0.05, 60)), 2.0) == "missed"
    assert verdict(spread(rng.normal(2.0, 0.3, 60)), 2.0) == "within noise"

