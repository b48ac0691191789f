"""The accuracy budget: every decision that weighs mAP50-95 against the user's MAX_MAP_DROP.

- `points_below`: points of mAP50-95 a model is below another (negative: better); every drop,
  delta and gap the toolkit reports is this one function;
- `fits` / `status`: whether a drop is within a budget, and the word for it;
- `choose_reference`: the fair reference (the equal-budget model, unless its extra epochs made it
  worse), chosen once by the search stage and read from its record by everyone after;
- `choose_served`: the served model among measured rows;
- `keep_float`: the one mixed-precision loop (the most quantization-sensitive convs kept in
  float, a few more at a time, until a judge accepts), used by the search's rescue (judged on the
  budget) and by the parity gate (judged on its checks).

Pure: numbers in, decisions out, unit-tested without training anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

FITS, OVER = "fits", "over budget"
# The unpruned models the reference is chosen from, in order of preference on a tie: the
# equal-budget fine-tune (same extra epochs as the students) first, then the original baseline.
REFERENCE_STAGES = ("finetune", "export")
# Mixed precision: how many of the most quantization-sensitive convs to keep float, in turn.
MIXED_PRECISION_COUNTS = (1, 2, 4, 8, 12)


def points_below(reference_map: float, candidate_map: float) -> float:
    """mAP50-95 points `candidate_map` is below `reference_map` (maps as 0..1 fractions)."""
    return round((reference_map - candidate_map) * 100, 2)


def fits(drop_points: float, budget_points: float) -> bool:
    return drop_points <= budget_points


def status(drop_points: float, budget_points: float) -> str:
    return FITS if fits(drop_points, budget_points) else OVER


@dataclass(frozen=True)
class Reference:
    """The model accuracy is held against: which stage, and its mAP."""

    stage: str
    map50: float
    map50_95: float
    scores: dict = field(default_factory=dict)  # {stage: {"map50", "map50_95"}} of every unpruned model

    def as_dict(self) -> dict:
        return {"stage": self.stage, "map50": self.map50, "map50_95": self.map50_95, "scores": self.scores}

    @classmethod
    def from_dict(cls, record: dict) -> "Reference":
        return cls(record["stage"], record["map50"], record["map50_95"], record.get("scores", {}))

    @property
    def row_key(self) -> str:
        """Its row in the report."""
        return "equal_budget" if self.stage == "finetune" else "baseline"

    @property
    def weights_stage(self) -> str:
        """The manifest stage holding the reference's weights (export's are the baseline's)."""
        return "finetune" if self.stage == "finetune" else "baseline"

    def extra_epochs_gain_points(self) -> float:
        """What the extra epochs added to the unpruned model, in points (negative: they made it worse)."""
        return points_below(self.scores["finetune"]["map50_95"], self.scores["export"]["map50_95"])


def choose_reference(scores: dict[str, dict]) -> Reference:
    """The fair reference among `scores` ({stage: {"map50", "map50_95"}}): the most accurate, the
    equal-budget model on a tie (extra epochs are not a compression gain, and can make the
    unpruned model worse on a tiny dataset)."""
    stages = [s for s in REFERENCE_STAGES if s in scores]
    best = max(stages, key=lambda s: scores[s]["map50_95"])  # max keeps the first of equals
    return Reference(best, scores[best]["map50"], scores[best]["map50_95"], scores)


# -- the served choice -------------------------------------------------------------------------

def broken_step(row: dict, twin: dict | None, reference_map: float) -> str:
    """Which step of a candidate broke the budget: training (pruning + distillation) or INT8."""
    total = points_below(reference_map, row["map50_95"])
    if twin is None:
        return f"{row['model']} is {total} points below"
    trained = points_below(reference_map, twin["map50_95"])
    return (f"{row['model']} is {total} points below: {trained} from training (its FP32 model: pruning and "
            f"distillation) and {round(total - trained, 2)} from INT8")


def choose_served(rows: list[dict], reference_map: float, budget_points: float, allow_over_budget: bool = False,
                  twins: dict[str, dict] | None = None, excluded: frozenset[str] = frozenset()) -> tuple[dict, str]:
    """The served row and the rule that picked it.

    `rows` are the servable rows (every INT8 candidate and the FP32 baselines; `precision` int8 /
    fp32, `map50_95`, `bs1_ms`, `model`, and `key`/`twin` naming rows). The fastest row within
    `budget_points` of the reference; the reference itself is always within, so a budget no INT8
    row fits serves FP32 and says which step broke it. `allow_over_budget`: the most accurate
    INT8 row instead of FP32. `excluded`: keys of rows the parity gate refused (never served).
    `twins`: {row key: its FP32 twin row}, to say which step broke the budget.
    """
    twins = twins or {}
    rows = [r for r in rows if r.get("key") not in excluded]
    within = [r for r in rows if fits(points_below(reference_map, r["map50_95"]), budget_points)]
    int8 = [r for r in rows if r["precision"] == "int8"]
    if any(r["precision"] == "int8" for r in within):
        served = min(within, key=lambda r: r["bs1_ms"])
        return served, f"the fastest measured candidate within {budget_points:g} points of the reference"
    closest = max(int8, key=lambda r: r["map50_95"]) if int8 else None
    why = (f"no INT8 candidate fits {budget_points:g} points: the closest, "
           + broken_step(closest, twins.get(closest.get("key")), reference_map)) if closest \
        else "no INT8 candidate was made"
    if allow_over_budget and closest:
        return closest, f"{why}; ALLOW_OVER_BUDGET=1: the most accurate INT8 candidate, over budget"
    served = min(within, key=lambda r: r["bs1_ms"])
    return served, f"{why}; serving {served['model']} (within budget)"


# -- mixed precision -----------------------------------------------------------------------------

@dataclass
class FloatTrial:
    """One try of the keep-float loop: the convs kept in float and what the judge said."""

    float_convs: list[str]
    accepted: bool
    detail: dict = field(default_factory=dict)


def keep_float(ranking: list[str], judge: Callable[[list[str]], tuple[bool, dict]],
               counts: tuple[int, ...] = MIXED_PRECISION_COUNTS) -> tuple[list[str] | None, list[FloatTrial]]:
    """Keep the first 1, 2, 4, ... convs of `ranking` (most quantization-sensitive first) in float
    until `judge(kept)` accepts; returns (the accepted list or None, every trial in order)."""
    trials: list[FloatTrial] = []
    for count in sorted({c for c in counts if 0 < c <= len(ranking)}):
        kept = list(ranking[:count])
        accepted, detail = judge(kept)
        trials.append(FloatTrial(kept, bool(accepted), detail))
        if accepted:
            return kept, trials
    return None, trials
