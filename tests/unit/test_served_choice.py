"""The budget module: which model is served (the fastest measured one within the accuracy budget,
never one outside it), the reference, and the one keep-float loop."""

from __future__ import annotations

import pytest

from compress.budget import (FITS, OVER, FloatTrial, broken_step, choose_reference, choose_served, fits, keep_float,
                             points_below, status)
from compress.report import pareto_front


def _row(name: str, bs1_ms: float, map50_95: float, precision: str = "int8") -> dict:
    return {"key": name, "model": name, "bs1_ms": bs1_ms, "map50_95": map50_95, "precision": precision}


# Shaped like the default run: FP32 reference, INT8 of it close, students faster and lower.
REFERENCE = _row("equal-budget FP32", 11.4, 0.9434, "fp32")
BASELINE = _row("baseline FP32", 11.3, 0.9179, "fp32")
INT8_REFERENCE = _row("INT8 of the equal-budget model", 8.9, 0.9394)
RELU_1 = _row("ReLU unpruned INT8", 5.6, 0.9350)
SILU_25 = _row("SiLU 2.5x INT8", 5.3, 0.9163)
RELU_25 = _row("ReLU 2.5x INT8", 3.8, 0.9126)
RELU_35 = _row("ReLU 3.5x INT8", 3.3, 0.8834)
SERVABLE = [REFERENCE, BASELINE, INT8_REFERENCE, RELU_1, SILU_25, RELU_25, RELU_35]


@pytest.mark.parametrize("budget", [0.0, 0.3, 0.5, 0.85, 1.0, 2.0, 2.71, 3.0, 3.5, 5.0, 6.0, 100.0])
def test_the_served_row_is_the_fastest_within_the_budget(budget):
    served, _ = choose_served(SERVABLE, REFERENCE["map50_95"], budget)
    drop = round((REFERENCE["map50_95"] - served["map50_95"]) * 100, 2)
    assert drop <= budget
    within = [r for r in SERVABLE if round((REFERENCE["map50_95"] - r["map50_95"]) * 100, 2) <= budget]
    assert served["bs1_ms"] == min(r["bs1_ms"] for r in within)


def test_budget_picks_along_the_front():
    assert choose_served(SERVABLE, REFERENCE["map50_95"], 0.5)[0] is INT8_REFERENCE
    assert choose_served(SERVABLE, REFERENCE["map50_95"], 1.0)[0] is RELU_1
    assert choose_served(SERVABLE, REFERENCE["map50_95"], 3.1)[0] is RELU_25
    assert choose_served(SERVABLE, REFERENCE["map50_95"], 6.0)[0] is RELU_35


def test_no_int8_within_the_budget_serves_fp32_and_says_which_step_broke_it():
    twins = {INT8_REFERENCE["key"]: REFERENCE}
    served, rule = choose_served(SERVABLE, REFERENCE["map50_95"], 0.2, twins=twins)
    assert served is REFERENCE and served["precision"] == "fp32"
    # the closest INT8 row is named with its drop and the step that cost it (INT8 here: its twin is the reference)
    assert "INT8 of the equal-budget model is 0.4 points below: 0.0 from training" in rule
    assert "and 0.4 from INT8" in rule


def test_allow_over_budget_serves_the_most_accurate_int8_instead():
    served, rule = choose_served(SERVABLE, REFERENCE["map50_95"], 0.2, allow_over_budget=True)
    assert served is INT8_REFERENCE and "over budget" in rule


def test_a_dominated_row_is_never_served():
    dominated = _row("dominated INT8", 6.0, 0.9100)
    rows = SERVABLE + [dominated]
    assert dominated not in pareto_front(rows)
    for budget in (0.5, 1.0, 3.0, 4.0, 10.0):
        assert choose_served(rows, REFERENCE["map50_95"], budget)[0] is not dominated


def test_a_weak_or_still_learning_reference_is_said_with_what_to_do():
    from compress.report import _weak_reference

    assert _weak_reference(REFERENCE, gain_points=0.4, budget=1.0) is None
    learning = _weak_reference(REFERENCE, gain_points=4.0, budget=1.0)
    assert "still learning" in learning and "EPOCHS=" in learning and "WEIGHTS=" in learning
    assert _weak_reference(REFERENCE, gain_points=4.0, budget=5.0) is None  # the budget covers it
    weak = _weak_reference(_row("aerial reference", 9.0, 0.077, "fp32"), gain_points=0.0, budget=1.0)
    assert "too weak" in weak and "0.077" in weak


def test_the_broken_step_is_split_into_training_and_int8():
    twin = _row("ReLU 1.25x FP32", 9.0, 0.9329, "fp32")
    student = _row("ReLU 1.25x INT8", 5.0, 0.9305)
    line = broken_step(student, twin, REFERENCE["map50_95"])
    assert "1.29 points below: 1.05 from training" in line and "0.24 from INT8" in line


def test_a_row_the_gate_refused_is_never_served():
    for budget in (1.0, 3.1):
        fastest, _ = choose_served(SERVABLE, REFERENCE["map50_95"], budget)
        served, _ = choose_served(SERVABLE, REFERENCE["map50_95"], budget, excluded=frozenset({fastest["key"]}))
        assert served is not fastest and served["bs1_ms"] > fastest["bs1_ms"]
        within = [r for r in SERVABLE if r is not fastest and points_below(REFERENCE["map50_95"], r["map50_95"]) <= budget]
        assert served["bs1_ms"] == min(r["bs1_ms"] for r in within)


def test_points_and_fit_are_one_rule():
    assert points_below(0.9434, 0.9350) == 0.84 and points_below(0.9350, 0.9434) == -0.84
    assert fits(1.0, 1.0) and not fits(1.01, 1.0) and fits(-0.3, 0.0)
    assert status(1.0, 1.0) == FITS and status(1.01, 1.0) == OVER


def test_the_reference_is_the_more_accurate_unpruned_model_the_equal_budget_one_on_a_tie():
    scores = {"finetune": {"map50": 0.97, "map50_95": 0.9434}, "export": {"map50": 0.96, "map50_95": 0.9179}}
    reference = choose_reference(scores)
    assert (reference.stage, reference.map50_95, reference.weights_stage) == ("finetune", 0.9434, "finetune")
    assert reference.extra_epochs_gain_points() == 2.55
    worse = choose_reference({"finetune": {"map50": 0.5, "map50_95": 0.30}, "export": {"map50": 0.6, "map50_95": 0.31}})
    assert (worse.stage, worse.weights_stage, worse.extra_epochs_gain_points()) == ("export", "baseline", -1.0)
    tie = choose_reference({"export": {"map50": 0.5, "map50_95": 0.3}, "finetune": {"map50": 0.5, "map50_95": 0.3}})
    assert tie.stage == "finetune"
    assert type(reference).from_dict(reference.as_dict()) == reference


def test_keep_float_escalates_until_the_judge_accepts_and_stops_there():
    ranking = [f"conv{i}" for i in range(20)]  # most sensitive first
    asked = []

    def judge(kept):
        asked.append(list(kept))
        return len(kept) >= 4, {"count": len(kept)}

    kept, trials = keep_float(ranking, judge)
    assert kept == ranking[:4] and [len(a) for a in asked] == [1, 2, 4]
    assert trials == [FloatTrial(ranking[:1], False, {"count": 1}), FloatTrial(ranking[:2], False, {"count": 2}),
                      FloatTrial(ranking[:4], True, {"count": 4})]
    never, tried = keep_float(ranking[:5], lambda kept: (False, {}))
    assert never is None and [len(t.float_convs) for t in tried] == [1, 2, 4]  # never more than are ranked
