"""Polygraphy comparisons of two runners on real val images (the gate's numeric checks).

Raw head outputs are decoded first and compared as separate outputs with their own tolerances:
boxes in pixels and class scores on the anchors the reference is confident about. A
whole-output comparison passes broken models (pixel boxes swamp the 0..1 scores).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compress.detection import decode_raw_head, prepare_image
from compress.evaluate import val_split

# Anchors compared: those the reference is confident about, and always its best TOP_ANCHORS per image
COMPARISON_CONF = 0.25
TOP_ANCHORS = 50


def val_feeds(data_yaml: Path, image_size: tuple[int, int], count: int = 8, batch: int = 4) -> list[dict]:
    """A Polygraphy data loader: real val images, prepared as the served preprocess prepares them."""
    tensors = [prepare_image(item.path.read_bytes(), image_size)[0] for item in val_split(data_yaml, count)]
    return [{"images": np.stack(tensors[i:i + batch])} for i in range(0, len(tensors), batch)]


def _decode_for_comparison(results, info) -> None:
    """Replace raw head outputs with boxes/scores on the reference's confident anchors, in place."""
    from polygraphy.comparator.struct import IterationResult

    reference = results[0][1]
    for iteration, ref_output in enumerate(reference):
        ref_pred = decode_raw_head(ref_output["box_logits"], ref_output["class_logits"], info.image_size,
                                   info.strides)
        confidence = ref_pred[:, 4:].max(axis=1)  # [B, A]
        # a weak model still gets a non-empty comparison: its best anchors are always compared
        top = np.argsort(-confidence, axis=1)[:, :TOP_ANCHORS]
        mask = confidence > COMPARISON_CONF
        np.put_along_axis(mask, top, True, axis=1)
        for _, iterations in results:
            out = iterations[iteration]
            pred = decode_raw_head(out["box_logits"], out["class_logits"], info.image_size, info.strides)
            decoded = {"boxes": np.ascontiguousarray(pred[:, :4].transpose(0, 2, 1)[mask]),  # [N, 4] xywh px
                       "scores": np.ascontiguousarray(pred[:, 4:].transpose(0, 2, 1)[mask])}  # [N, nc]
            iterations[iteration] = IterationResult(decoded, out.runtime, out.runner_name)


def polygraphy_compare(name: str, runners: list, feeds: list[dict], info, box_atol_frac: float, score_atol: float,
                       out_dir: Path) -> dict:
    """Compare `runners` (the first is the reference) on `feeds`: boxes pass when their median
    error is within `box_atol_frac` of the image side, scores when their mean error is within
    `score_atol`. Inputs, outputs and Polygraphy's accuracy results are saved under `out_dir`."""
    from polygraphy.comparator import Comparator, SimpleCompareFunc
    from polygraphy.logger import G_LOGGER

    out_dir.mkdir(parents=True, exist_ok=True)
    box_atol = box_atol_frac * max(info.image_size)
    compare = SimpleCompareFunc(atol={"boxes": box_atol, "scores": score_atol}, rtol={"": 0.0},
                                 check_error_stat={"boxes": "median", "scores": "mean"})
    # Polygraphy's per-output statistics go to the JSON files below and parity.md; on the console
    # only its warnings and errors
    with G_LOGGER.verbosity(G_LOGGER.WARNING):
        results = Comparator.run(runners, data_loader=feeds, save_inputs_path=str(out_dir / f"{name}_inputs.json"))
        _decode_for_comparison(results, info)
        results.save(str(out_dir / f"{name}_outputs.json"))
        accuracy = Comparator.compare_accuracy(results, compare_func=compare)
    accuracy.save(str(out_dir / f"{name}_accuracy.json"))
    stats = {}
    for iterations in (its for result in accuracy for its in result.values()):
        for iteration in iterations:
            for output, result in iteration.items():
                entry = stats.setdefault(output, {"median_absdiff": 0.0, "mean_absdiff": 0.0, "max_absdiff": 0.0})
                for key in entry:
                    entry[key] = round(max(entry[key], float(getattr(result, key))), 5)
    return {"name": name, "runners": [r.name for r in runners], "passed": bool(accuracy), "stats": stats,
            "box_atol_px": round(box_atol, 3)}
