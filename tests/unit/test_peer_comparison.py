"""The peer bench's verdict in words: which side is faster, by how much, beyond the noise or not."""

from __future__ import annotations

import numpy as np

from compress.peer_bench import BASELINE, PEER, SERVED, SERVED_OPENVINO, comparison, markdown


def _rounds(ms: float, count: int, seed: int) -> list[float]:
    return list(ms + np.random.default_rng(seed).normal(0, ms * 0.01, count).clip(0))


def _timings(ms: dict[str, tuple[float, float]]) -> dict[str, dict]:
    return {key: {"bs1_rounds": _rounds(bs1, 40, i), "bs8_rounds": _rounds(bs8, 20, i + 50)}
            for i, (key, (bs1, bs8)) in enumerate(ms.items())}


ROWS = {SERVED: {"map50_95": 0.9394}, PEER: {"map50_95": 0.9120}}


def test_the_verdict_follows_the_measured_direction_at_each_batch_size():
    # served twice the peer's speed at batch 1, half of it at batch 8, end to end; the served file
    # 1.5x as fast on ONNX Runtime as on OpenVINO at batch 1, 0.8x at batch 8
    end_to_end = _timings({SERVED: (5.0, 40.0), PEER: (10.0, 20.0)})
    detector = _timings({SERVED: (3.0, 16.0), SERVED_OPENVINO: (4.5, 12.8)})
    lines = comparison(ROWS, detector, end_to_end)
    assert lines[0].startswith("batch 1, end to end: the served model is 2.00x the peer's speed (faster than it;")
    assert lines[1].startswith("batch 8, end to end: the served model is 0.50x the peer's speed (slower than it;")
    assert lines[2] == "mAP50-95: the served model +2.74 points against the peer (0.9394 vs 0.9120, same evaluator)"
    assert "1.50x OpenVINO f32's speed (faster than it;" in lines[3]
    assert "0.80x OpenVINO f32's speed (slower than it;" in lines[4]
    assert not any("within the noise" in line for line in lines)
    assert len(lines) == 5  # no reference given: no budget line


def test_the_budget_line_holds_each_side_against_the_reference():
    from compress.budget import Reference

    timings = _timings({SERVED: (5.0, 40.0), PEER: (4.0, 20.0), SERVED_OPENVINO: (6.0, 50.0)})
    lines = comparison(ROWS, timings, timings, Reference("finetune", 0.96, 0.9434), 1.0)
    assert lines[-1] == ("budget: against the reference (finetune, 0.9434) with MAX_MAP_DROP=1, the served model is "
                         "0.40 points below it (fits), the peer 3.14 points below it (over budget)")


def test_a_difference_inside_the_noise_is_said_to_be():
    rng = np.random.default_rng(3)
    noisy = {key: {"bs1_rounds": list(rng.uniform(4, 8, 40)), "bs8_rounds": list(rng.uniform(30, 60, 20))}
             for key in (SERVED, PEER, SERVED_OPENVINO)}
    lines = comparison({SERVED: {"map50_95": 0.5}, PEER: {"map50_95": 0.51}}, noisy, noisy)
    assert "within the noise" in lines[0] and "-1.00 points" in lines[2]


def test_the_markdown_states_every_row_and_the_calibration_of_both_sides():
    facts = {"threads": 1, "providers": ["CPUExecutionProvider"]}
    speed = {"bs1": {"estimate": 1.0, "p10": 1.0, "p90": 1.0}, "bs8": {"estimate": 1.0, "p10": 1.0, "p90": 1.0}}
    row = {"runtime": "onnxruntime", "facts": facts, "file_mb": 1.0, "bs1_ms": 1.0, "bs8_ms": 2.0, "map50_95": 0.5,
           "end_to_end_bs1_ms": 1.5, "end_to_end_bs8_ms": 3.0, "end_to_end_speedup": speed, "speedup": speed}
    result = {"machine": None, "threads": 1, "imgsz": 256, "versions": {"openvino": "x"}, "gated": False,
              "rows": {BASELINE: {**row, "label": "baseline FP32"}, PEER: {**row, "label": "the peer"}},
              "ultralytics_validator": {"peer": {"map50_95": 0.4}, "baseline_pt": {"map50_95": 0.45}},
              "calibration_split": "train", "calibration_images": {"peer": 320, "served": 64},
              "comparison": ["line one", "line two"], "machine_load": {}}
    text = markdown(result)
    assert "| baseline FP32 | onnxruntime (CPU) |" in text and "| the peer | onnxruntime (CPU) |" in text
    assert "all 320 images of the `train` split" in text and "INT8 on 64 images" in text
    assert "- line one\n- line two" in text and "no parity gate record passed it" in text
