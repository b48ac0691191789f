"""Which compressed row the report serves: speed only within the accuracy the user gives up."""

from __future__ import annotations

from compress.report import choose_served, pareto_front


def _row(name: str, bs1_ms: float, map50_95: float) -> dict:
    return {"model": name, "bs1_ms": bs1_ms, "map50_95": map50_95}


# Shaped like the default run: FP32 reference, SiLU INT8 close to it, ReLU students faster and lower.
REFERENCE = _row("reference FP32", 11.4, 0.9434)
SILU = _row("SiLU INT8", 5.3, 0.9168)
RELU_25 = _row("ReLU 2.5x INT8", 3.8, 0.9007)
RELU_35 = _row("ReLU 3.5x INT8", 3.3, 0.8853)
ROWS = [REFERENCE, SILU, RELU_25, RELU_35]
SERVABLE = [SILU, RELU_25, RELU_35]


def test_nothing_within_the_drop_serves_the_most_accurate_row():
    served, rule = choose_served(ROWS, SERVABLE, REFERENCE, max_map_drop=1.0)
    assert served is SILU
    assert "within 1 points" in rule and "MAX_MAP_DROP" in rule


def test_a_larger_allowance_buys_the_fastest_row_within_it():
    assert choose_served(ROWS, SERVABLE, REFERENCE, max_map_drop=4.5)[0] is RELU_25
    served, rule = choose_served(ROWS, SERVABLE, REFERENCE, max_map_drop=6.0)
    assert served is RELU_35 and rule.startswith("fastest")


def test_a_row_off_the_front_is_never_the_fast_choice():
    # slower and less accurate than the SiLU row: dominated, so never served for speed
    dominated = _row("dominated INT8", 6.0, 0.9100)
    rows, servable = ROWS + [dominated], SERVABLE + [dominated]
    assert dominated not in pareto_front(rows)
    for allowance in (3.0, 4.0, 10.0):
        assert choose_served(rows, servable, REFERENCE, allowance)[0] is not dominated
