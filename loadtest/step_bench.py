"""What each step costs at camera sizes, in-process, in one run (`make bench-steps`).

    python -m loadtest.step_bench --repo model_repository --artifacts artifacts

- preprocess: decode + letterbox per frame, the full decode (Ultralytics' preprocessing) against
  the reduced JPEG decode the served preprocess runs, for the dataset's frames and 480p, 720p and
  1080p camera frames; one thread, the two paths interleaved round by round and the ratio taken
  per round, so a slow moment moves both;
- accuracy: mAP50-95 of the served detector on each labelled camera-frame set with either path
  (the served ensemble equals the reduced path by construction; `make verify` and the tests
  check that), the difference in points against the 0.3-point tolerance;
- postprocess: class-aware NMS at the repository's max batch on a crowded scene, OpenCV's batched
  NMS (served) against torchvision's `batched_nms` (Ultralytics' own).
Writes steps.json, steps.md and steps.png into `--out`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from compress.benchmark import spread, verdict
from compress.detection import decode_for_model, nms, prepare_image
from compress.env import describe_machine
from compress.errors import InputFileError, cli_entry
from compress.plotting import saved_figure
from tools.frame_sets import FrameSet, resolve_frames
from tools.client import collect_images

FRAME_SETS = ("dataset", "480p", "720p", "1080p")
DECODE_GOAL = 3.0  # 1080p: the reduced decode at least this many times cheaper than the full one
MAP_TOLERANCE_POINTS = 0.3
ROUNDS = 15  # the ratio is taken per round: a noisy moment moves both sides
FRAMES_PER_ROUND = 16


def _per_frame_ms(payloads: list[bytes], size: tuple[int, int], pixel_type: str, reduced: bool) -> float:
    start = time.perf_counter()
    for payload in payloads:
        prepare_image(payload, size, pixel_type, reduced=reduced)
    return (time.perf_counter() - start) * 1e3 / len(payloads)


def decode_costs(frame_set: FrameSet, size: tuple[int, int], pixel_type: str) -> dict:
    payloads = [p.read_bytes() for p in collect_images([frame_set.images])[:FRAMES_PER_ROUND]]
    _per_frame_ms(payloads[:2], size, pixel_type, True)  # warm OpenCV's decoder
    full, reduced = [], []
    for _ in range(ROUNDS):
        full.append(_per_frame_ms(payloads, size, pixel_type, False))
        reduced.append(_per_frame_ms(payloads, size, pixel_type, True))
    ratios = [f / r for f, r in zip(full, reduced)]
    return {"decode_scale": decode_for_model(payloads[0], size)[1], "full_ms": spread(full),
            "reduced_ms": spread(reduced), "full_over_reduced": spread(ratios)}


def accuracy(frame_set: FrameSet, onnx: Path, runtime: dict | None = None) -> dict:
    """`runtime`: the served file's session (compress.runtimes: runtime, precision), default ONNX Runtime."""
    from compress.evaluate import VAL_CONF, VAL_IOU, evaluate
    from compress.local_detector import LocalDetector

    scores = {}
    for label, reduced in (("full_decode", False), ("reduced_decode", True)):
        detector = LocalDetector(onnx, conf_threshold=VAL_CONF, iou_threshold=VAL_IOU, reduced_decode=reduced,
                                 **(runtime or {}))
        scores[label] = evaluate(detector.detect, frame_set.data_yaml, desc=f"mAP {frame_set.name} {label}")
    points = round((scores["reduced_decode"]["map50_95"] - scores["full_decode"]["map50_95"]) * 100, 2)
    return {**scores, "reduced_minus_full_points": points, "within_tolerance": abs(points) <= MAP_TOLERANCE_POINTS}


def crowded_scene(batch: int, anchors: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every anchor a candidate, boxes piled on a few spots (a crowd): [batch * anchors] boxes."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(40, 216, (8, 2))
    xy = centres[rng.integers(0, len(centres), batch * anchors)] + rng.normal(0, 12, (batch * anchors, 2))
    wh = rng.uniform(10, 60, (batch * anchors, 2))
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], axis=1).astype(np.float32)
    return boxes, rng.uniform(0.25, 1, batch * anchors).astype(np.float32), rng.integers(0, classes, batch * anchors)


def numpy_greedy_nms(boxes: np.ndarray, scores: np.ndarray, iou: float, classes: np.ndarray) -> np.ndarray:
    """The Python-loop NMS the postprocess ran before OpenCV's (kept here as the comparison's baseline)."""
    boxes = boxes + classes[:, None] * 7680.0  # one pass, class-aware: classes never overlap
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        top_left = np.maximum(boxes[best, :2], boxes[rest, :2])
        bottom_right = np.minimum(boxes[best, 2:], boxes[rest, 2:])
        inter = (bottom_right - top_left).clip(0).prod(axis=1)
        order = rest[inter / (areas[best] + areas[rest] - inter + 1e-9) <= iou]
    return np.asarray(keep, dtype=np.int64)


def nms_costs(batch: int, anchors: int, classes: int, iou: float = 0.45) -> dict:
    import torch
    import torchvision

    boxes, scores, labels = crowded_scene(batch, anchors, classes)
    per_image = [slice(i * anchors, (i + 1) * anchors) for i in range(batch)]
    tensors = [(torch.from_numpy(boxes[s]), torch.from_numpy(scores[s]), torch.from_numpy(labels[s])) for s in per_image]
    opencv, torch_ms, loop_ms, same = [], [], [], True
    for _ in range(ROUNDS):
        start = time.perf_counter()
        kept = [nms(boxes[s], scores[s], iou, labels[s]) for s in per_image]
        opencv.append((time.perf_counter() - start) * 1e3)
        start = time.perf_counter()
        looped = [numpy_greedy_nms(boxes[s], scores[s], iou, labels[s]) for s in per_image]
        loop_ms.append((time.perf_counter() - start) * 1e3)
        start = time.perf_counter()
        reference = [torchvision.ops.batched_nms(b, sc, lb, iou).numpy() for b, sc, lb in tensors]
        torch_ms.append((time.perf_counter() - start) * 1e3)
        same = same and all(k.tolist() == r.tolist() == g.tolist() for k, r, g in zip(kept, reference, looped))
    return {"batch": batch, "candidates_per_image": anchors, "kept": int(sum(len(k) for k in kept)),
            "opencv_ms": spread(opencv), "torchvision_ms": spread(torch_ms), "numpy_loop_ms": spread(loop_ms),
            "same_detections": same}


def to_markdown(result: dict) -> str:
    machine = result["machine"]
    lines = ["# Per-step costs at camera sizes (in-process, one thread)", "",
             f"Machine: {machine['cpu']}, {machine['cores']} cores ({', '.join(machine['vector_extensions'])}); "
             f"model input {result['model_input'][1]}x{result['model_input'][0]}.", "",
             "| frames | size | KiB/frame | decode scale | full decode ms/frame | reduced ms/frame | full / reduced (p10-p90) |",
             "|---|---|---:|---:|---:|---:|---|"]
    for name, r in result["preprocess"].items():
        fs, ratio = result["frame_sets"][name], r["full_over_reduced"]
        lines.append(f"| {name} | {fs['width']}x{fs['height']} | {fs['mean_kib']} | 1/{r['decode_scale']} | "
                     f"{r['full_ms']['median']:.2f} | {r['reduced_ms']['median']:.2f} | "
                     f"{ratio['median']:.2f}x ({ratio['p10']:.2f}-{ratio['p90']:.2f}) |")
    goal = result.get("goals", {}).get("decode_1080p")
    if goal:
        lines += ["", f"1080p: reduced decode {goal['ratio']['median']:.2f}x cheaper (goal >= {DECODE_GOAL:g}x: "
                      f"**{goal['verdict']}**)."]
    lines += ["", "| frames | mAP50-95 full decode | reduced decode | difference (points) | within 0.3 |", "|---|---:|---:|---:|---|"]
    for name, a in result["accuracy"].items():
        lines.append(f"| {name} | {a['full_decode']['map50_95']:.4f} | {a['reduced_decode']['map50_95']:.4f} | "
                     f"{a['reduced_minus_full_points']:+.2f} | {'yes' if a['within_tolerance'] else 'no'} |")
    n = result["nms"]
    lines += ["", f"NMS, batch of {n['batch']} x {n['candidates_per_image']} crowded candidates ({n['kept']} kept), "
                  f"median of {ROUNDS}: OpenCV's batched NMS (served) {n['opencv_ms']['median']:.1f} ms, a greedy "
                  f"NumPy loop per image {n['numpy_loop_ms']['median']:.1f} ms, torchvision {n['torchvision_ms']['median']:.1f} ms "
                  f"(not importable in Triton's Python models); same detections: {'yes' if n['same_detections'] else 'NO'}."]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    names = list(result["preprocess"])
    with saved_figure(path) as (_, ax):
        x = np.arange(len(names))
        ax.bar(x - 0.2, [result["preprocess"][n]["full_ms"]["median"] for n in names], 0.4, label="full decode")
        ax.bar(x + 0.2, [result["preprocess"][n]["reduced_ms"]["median"] for n in names], 0.4, label="reduced JPEG decode")
        ax.set_xticks(x, [f"{n}\n{result['frame_sets'][n]['width']}x{result['frame_sets'][n]['height']}" for n in names])
        ax.set_ylabel("decode + letterbox, ms per frame")
        ax.set_title(f"preprocess cost per frame ({result['machine']['cpu']}, one thread)")
        ax.legend(fontsize=8)


@cli_entry
def main(argv: list[str] | None = None) -> None:
    from compress.export import read_info
    from loadtest.spec import default_out
    from tools.repository import RepositoryRecord

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=Path("model_repository"))
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--frames", default=",".join(FRAME_SETS), help="comma-separated frame sets")
    parser.add_argument("--out", type=Path, help="default: <artifacts>/bench-steps")
    args = parser.parse_args(argv)
    args.out = default_out(args, "bench-steps")
    record = RepositoryRecord.load(args.repo)
    onnx = record.detector_file
    if record.target == "tensorrt":
        raise InputFileError(f"{args.repo} serves a TensorRT plan", hint="build an ONNX target (`make repo`) to measure its steps")
    settings, info = record.settings, read_info(onnx)
    args.out.mkdir(parents=True, exist_ok=True)
    frame_sets = {fs.name: fs for fs in (resolve_frames(n.strip(), args.artifacts) for n in args.frames.split(","))}
    result = {"machine": describe_machine(), "model_input": list(info.image_size),
              "frame_sets": {n: fs.record() for n, fs in frame_sets.items()}, "preprocess": {}, "accuracy": {}}
    for name, frame_set in frame_sets.items():
        print(f"==> preprocess cost: {frame_set.label()}", flush=True)
        result["preprocess"][name] = decode_costs(frame_set, info.image_size, info.pixel_type)
    for name, frame_set in frame_sets.items():
        if frame_set.data_yaml and name != "dataset":
            result["accuracy"][name] = accuracy(frame_set, onnx, {"runtime": settings.runtime,
                                                                  "precision": settings.openvino_precision})
    print("==> NMS at the max batch on a crowded scene", flush=True)
    result["nms"] = nms_costs(settings.max_batch_size, settings.anchors, info.num_classes)
    hd = result["preprocess"].get("1080p")
    if hd:
        result["goals"] = {"decode_1080p": {"ratio": hd["full_over_reduced"],
                                            "verdict": verdict(hd["full_over_reduced"], DECODE_GOAL)}}
    (args.out / "steps.json").write_text(json.dumps(result, indent=2))
    (args.out / "steps.md").write_text(to_markdown(result))
    plot(result, args.out / "steps.png")
    print(to_markdown(result))
    print(f"report: {args.out}/steps.md, steps.json, steps.png")


if __name__ == "__main__":
    main()
