"""The search trains only what can win, bisects the depth, stops deeper probes once over budget,
and respects its time limit. Accuracy and training are stand-ins here (the integration tests run
the real thing on the tiny profile); the decisions are what is under test."""

from __future__ import annotations

from compress.candidates import CandidateSpec, parse_spec, search_space
from compress.search import CANNOT_WIN, FITS, INFERRED_OVER, NO_TIME, OVER, Probe, run_search

REFERENCE = 0.94
DEPTHS = (1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75, 3.0, 3.5)


def _probes(activations=("relu", "silu")) -> list[Probe]:
    """Latency falls with depth; ReLU is ~35% faster than SiLU at the same depth; the unpruned INT8 is slowest."""
    probes = []
    for spec in search_space(activations, DEPTHS):
        ms = 9.0 / spec.depth * (0.65 if spec.activation == "relu" else 1.0) if spec.trained else 9.0
        probes.append(Probe(spec.name, spec.activation, spec.depth, spec.trained, ms, ms * 6))
    return probes


def _accuracy(drop_per_depth: float, relu_penalty: float = 0.6, int8_drop: float = 0.4):
    """mAP falling linearly with depth (points), ReLU a little below SiLU."""
    def evaluate(probe: Probe) -> float:
        if not probe.trained:
            return REFERENCE - int8_drop / 100
        points = int8_drop + drop_per_depth * (probe.depth - 1) + (relu_penalty if probe.activation == "relu" else 0)
        return REFERENCE - points / 100
    return evaluate


def _run(probes, evaluate, budget, seconds=1e9, estimate=lambda p: 60.0):
    trained = []

    def train(probe):
        trained.append(probe.name)
        return evaluate(probe)

    result = run_search(probes, train, REFERENCE, budget, seconds, estimate, log=lambda line: None)
    return result, trained


def _deepest_fitting_depth(evaluate, budget, activation):
    fits = [d for d in (1.0, *DEPTHS)
            if round((REFERENCE - evaluate(Probe("x", activation, d, True, 0, 0))) * 100, 2) <= budget]
    return max(fits) if fits else None


def test_search_space_has_the_safe_end_and_every_depth():
    names = [s.name for s in search_space(("relu", "silu"), (1.5, 2.0))]
    assert names == ["int8_reference", "relu_1x", "relu_1.5x", "relu_2x", "silu_1.5x", "silu_2x"]
    assert parse_spec("relu@2.5") == CandidateSpec("relu", 2.5) and not parse_spec("int8").trained


def test_finds_the_fastest_candidate_within_the_budget_without_training_the_grid():
    evaluate = _accuracy(drop_per_depth=1.2)
    for budget in (1.0, 2.0, 3.0, 4.0):
        probes = _probes()
        result, trained = _run(probes, evaluate, budget)
        best = result.best()
        # the truth, by brute force over every candidate
        truth = min((p for p in _probes() if round((REFERENCE - evaluate(p)) * 100, 2) <= budget),
                    key=lambda p: p.bs1_ms)
        assert best.name == truth.name, (budget, best.name, truth.name)
        # the INT8 of the reference, the unpruned student, at most 6 more trainings: not the grid of 19
        assert len(trained) <= 8 < len(probes)
        assert trained[:2] == ["int8_reference", "relu_1x"]
        deepest = _deepest_fitting_depth(evaluate, budget, best.activation)
        assert deepest - best.depth <= 0.25


def test_a_clear_miss_of_the_unpruned_student_rules_out_its_activation():
    probes = _probes()
    result, trained = _run(probes, _accuracy(drop_per_depth=0.5, relu_penalty=2.0), budget=1.0)
    assert trained[:2] == ["int8_reference", "relu_1x"]
    students = trained[2:]
    assert students and all(name.startswith("silu_") for name in students)  # SiLU searched, no pruned ReLU
    assert all(p.status == INFERRED_OVER for p in probes if p.activation == "relu" and p.depth > 1)
    assert result.best().name.startswith("silu_")  # a pruned SiLU student, not the untrained INT8


def test_no_deeper_probe_after_a_clear_miss():
    probes = _probes(("relu",))
    result, trained = _run(probes, _accuracy(drop_per_depth=3.0), budget=1.0)
    misses = [p for p in probes if p.status == OVER and p.note == "beyond noise"]
    assert misses
    for miss in misses:  # after a clear miss, nothing deeper of that activation is trained
        assert not [p for p in probes if p.order is not None and p.order > miss.order and p.depth > miss.depth]
    shallowest_miss = min(p.depth for p in misses)
    deeper = [p for p in probes if p.trained and p.depth > shallowest_miss and p.name not in trained]
    assert deeper and all(p.status == INFERRED_OVER for p in deeper)
    assert len(trained) <= 5


def test_a_miss_within_the_noise_keeps_deeper_depths_open():
    # over the budget by 0.3 points at every depth past 1x: within noise, so deeper ones may still be tried
    def evaluate(probe):
        return REFERENCE - (0.4 if not probe.trained else (0.8 if probe.depth == 1 else 1.3)) / 100
    probes = _probes(("relu",))
    result, trained = _run(probes, evaluate, budget=1.0)
    misses = [p for p in probes if p.status == OVER]
    assert misses and all(p.note == "within noise" for p in misses)
    assert not any(p.status == INFERRED_OVER for p in probes)
    first = min(misses, key=lambda p: p.order)
    # after a miss within the noise, a deeper depth was still tried
    assert [p for p in misses if p.order > first.order and p.depth > first.depth]


def test_slower_than_a_fitting_candidate_is_never_trained():
    probes = _probes()
    result, trained = _run(probes, _accuracy(drop_per_depth=0.1), budget=5.0)  # everything fits
    best = result.best()
    assert best.name == "relu_3.5x"
    for probe in probes:
        if probe.status == CANNOT_WIN:
            assert probe.bs1_ms >= best.bs1_ms and probe.name not in trained


def test_nothing_fits_leaves_no_fitting_candidate():
    probes = _probes()
    result, _ = _run(probes, _accuracy(drop_per_depth=2.0, int8_drop=1.5, relu_penalty=1.0), budget=1.0)
    assert result.best() is None
    assert not [p for p in probes if p.status == FITS]


def test_time_limit_marks_candidates_not_tried():
    probes = _probes()
    clock = iter(range(0, 10_000, 100))  # each probe takes 100 "seconds" of the clock
    result = run_search(probes, _accuracy(drop_per_depth=1.0), REFERENCE, 3.0, seconds_limit=250,
                        estimate_seconds=lambda p: 120.0 if p.trained else 0.0, log=lambda line: None,
                        clock=lambda: next(clock))
    assert [p for p in probes if p.status == NO_TIME]
    assert all("min" in p.note for p in probes if p.status == NO_TIME)
    # the untrained candidate needs no training time and is always measured
    assert next(p for p in probes if not p.trained).status in (FITS, OVER)


# -- input size as a search dimension ------------------------------------------------------------

SIZES = (224, 192)


def _sized_probes(activations=("relu", "silu"), sizes=SIZES) -> list[Probe]:
    """As `_probes`, each candidate also at smaller inputs: latency falls with the input's area."""
    probes = []
    for spec in search_space(activations, DEPTHS, sizes):
        ms = 9.0 / spec.depth * (0.65 if spec.activation == "relu" else 1.0) if spec.trained else 9.0
        ms *= ((spec.imgsz or 256) / 256) ** 2
        probes.append(Probe(spec.name, spec.activation, spec.depth, spec.trained, ms, ms * 6, imgsz=spec.imgsz))
    return probes


def _sized_accuracy(points_per_size_step: float, untrained_extra: float = 2.0, **kwargs):
    """`_accuracy`, less `points_per_size_step` per 32 px below 256 (more for the reference's INT8
    fed a size it was not fine-tuned for)."""
    base = _accuracy(**kwargs)

    def evaluate(probe: Probe) -> float:
        steps = (256 - (probe.imgsz or 256)) / 32
        extra = untrained_extra if (not probe.trained and probe.imgsz) else 0.0
        return base(probe) - (points_per_size_step * steps + extra) / 100
    return evaluate


def test_search_space_adds_every_candidate_at_each_smaller_size():
    names = [s.name for s in search_space(("relu", "silu"), (1.5,), (192,))]
    assert names == ["int8_reference", "relu_1x", "relu_1.5x", "silu_1.5x",
                     "int8_reference_192px", "relu_1x_192px", "relu_1.5x_192px", "silu_1x_192px", "silu_1.5x_192px"]
    assert parse_spec("relu@2.5:192") == CandidateSpec("relu", 2.5, imgsz=192)
    assert parse_spec("int8:224") == CandidateSpec("silu", 1.0, trained=False, imgsz=224)
    assert CandidateSpec("relu", 2.0, imgsz=192).label == "ReLU student, 2x fewer MACs, 192x192 input"
    assert CandidateSpec("relu", 2.0).name == "relu_2x"  # the trained size: names (and caches) as before


def test_search_over_sizes_finds_the_fastest_fit_of_the_whole_grid():
    for step, budget in ((0.3, 1.0), (0.3, 3.0), (1.5, 1.0), (1.5, 3.0), (5.0, 2.0)):
        evaluate = _sized_accuracy(step, drop_per_depth=1.2)
        probes = _sized_probes()
        result, trained = _run(probes, evaluate, budget)
        truth = min((p for p in _sized_probes() if round((REFERENCE - evaluate(p)) * 100, 2) <= budget),
                    key=lambda p: p.bs1_ms)
        best = result.best()
        # the same activation and size as the brute-force truth, within one depth step of it
        assert (best.activation, best.imgsz) == (truth.activation, truth.imgsz), (step, budget, best.name, truth.name)
        assert abs(best.depth - truth.depth) <= 0.25, (step, budget, best.name, truth.name)
        assert len(trained) < len(probes) / 3  # not the grid


def test_a_clear_miss_rules_out_the_same_activation_at_smaller_sizes_as_deep_or_deeper():
    from compress.search import _infer

    probes = {p.name: p for p in _sized_probes(("relu", "silu"), sizes=(192,))}
    miss = probes["relu_1.5x"]
    miss.status, miss.note, miss.drop_points = OVER, "beyond noise", 3.0
    _infer(list(probes.values()))
    ruled_out = {name for name, p in probes.items() if p.status == INFERRED_OVER}
    assert {"relu_1.5x_192px", "relu_2x_192px", "relu_1.75x", "relu_3.5x_192px"} <= ruled_out
    # shallower at the smaller size, another activation, the reference's INT8: still open
    for name in ("relu_1.25x_192px", "relu_1x_192px", "relu_1.25x", "silu_1.5x_192px", "int8_reference_192px"):
        assert probes[name].status == "open", name


def test_the_references_int8_at_a_smaller_size_rules_out_only_itself_smaller():
    from compress.search import _infer

    probes = {p.name: p for p in _sized_probes(("silu",), sizes=(224, 192))}  # the reference's INT8 is a SiLU model
    miss = probes["int8_reference_224px"]
    miss.status, miss.note, miss.drop_points = OVER, "beyond noise", 4.0
    _infer(list(probes.values()))
    assert probes["int8_reference_192px"].status == INFERRED_OVER
    # students fine-tuned at that size (or smaller) are not judged by an export that was not
    for name in ("silu_1x_224px", "silu_1.5x_224px", "silu_1x_192px", "silu_2x_192px"):
        assert probes[name].status == "open", name


def test_the_references_int8_at_a_smaller_size_does_not_rule_out_students_fine_tuned_for_it():
    # exported at 192 without training it is far over budget; fine-tuned at 192, the students fit
    probes = _sized_probes(("relu",), sizes=(192,))
    evaluate = _sized_accuracy(0.2, untrained_extra=10.0, drop_per_depth=0.5, relu_penalty=0.2)
    result, trained = _run(probes, evaluate, budget=1.0)
    untrained = next(p for p in probes if p.name == "int8_reference_192px")
    assert untrained.status == OVER and untrained.note == "beyond noise"
    assert result.best().imgsz == 192 and result.best().trained
    assert "relu_1x_192px" in trained
