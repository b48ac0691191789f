"""What shadow parity kept: agreement over time, the worst frames, and the budget on your traffic (`make audit`).

    python -m tools.audit --repo model_repository [--evidence evidence] [--out artifacts/audit] [--gate]

Reads the evidence store the served postprocess writes (compress.shadow.EvidenceStore: frames whose
agreement with the FP32 reference fell below the threshold, each with both sets of boxes, and the
agreement log of every compared frame) and writes into `--out`:
- agreement_over_time.png: box recall and extra-box share per minute of live traffic;
- worst_frames.png: the worst frames as the detector saw them, served boxes beside the reference's;
- audit.md / audit.json: the counts, the worst frames, and with `--gate` (when frames were kept)
  the budget question: the served model's and the reference's mAP50-95 on the val split plus these
  frames (the reference's boxes as their labels), in-process on the repository's own files, against
  MAX_MAP_DROP. A pessimistic check (the kept frames are the disagreeing ones), not the whole gate.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from compress.errors import InputFileError, cli_entry
from compress.plotting import saved_figure
from compress.shadow import EvidenceStore
from tools.repository import RepositoryRecord

WORST_SHOWN = 6


def evidence_dir(record: RepositoryRecord) -> Path:
    """Where the repository's postprocess writes evidence (the server's own rule: $YOLO_EVIDENCE_DIR,
    else the setting, relative to the repository's parent)."""
    from compress.shadow import resolve_evidence_dir

    return Path(resolve_evidence_dir(record.settings.evidence_dir, str(record.repo.resolve() / "postprocess")))


def frame_score(record: dict) -> float:
    """Lower is worse: the frame's recall of the reference's boxes, its share of boxes the reference
    has, or 1 - its found boxes' mean score drift."""
    counts = record["counts"]
    recall = counts["found"] / counts["reference_boxes"] if counts["reference_boxes"] else 1.0
    kept = 1 - counts["extra_boxes"] / counts["served_boxes"] if counts["served_boxes"] else 1.0
    scored = 1 - counts["score_drift_sum"] / counts["found"] if counts["found"] else 1.0
    return min(recall, kept, scored)


def distinct(frames: list) -> list:
    """One of each frame (by the bytes of its PNG), the first kept."""
    import hashlib

    seen, unique = set(), []
    for frame in frames:
        digest = hashlib.sha256(frame.path.read_bytes()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            unique.append(frame)
    return unique


def to_input_pixels(boxes: list[dict], letterbox: list[float]) -> np.ndarray:
    """Boxes in original-image pixels -> the letterboxed frame's pixels (gain, pad_x, pad_y)."""
    gain, pad_x, pad_y = letterbox[:3]
    xyxy = np.array([b["box_xyxy"] for b in boxes], dtype=np.float32).reshape(-1, 4)
    return xyxy * gain + np.array([pad_x, pad_y, pad_x, pad_y], dtype=np.float32)


def per_minute(log: list[dict]) -> list[dict]:
    buckets: dict[int, dict] = {}
    for line in log:
        minute = int(line["time"] // 60)
        entry = buckets.setdefault(minute, {"frames": 0, "reference_boxes": 0, "found": 0, "served_boxes": 0,
                                            "extra_boxes": 0})
        for key in entry:
            entry[key] += line.get(key, 1 if key == "frames" else 0)
    start = min(buckets) if buckets else 0
    return [{"minute": m - start, **v,
             "box_recall": round(v["found"] / v["reference_boxes"], 4) if v["reference_boxes"] else None,
             "extra_boxes_share": round(v["extra_boxes"] / v["served_boxes"], 4) if v["served_boxes"] else None}
            for m, v in sorted(buckets.items())]


def plot_over_time(minutes: list[dict], path: Path) -> None:
    with saved_figure(path) as (_, ax):
        xs = [m["minute"] for m in minutes]
        ax.plot(xs, [m["box_recall"] for m in minutes], marker="o", label="box recall of the reference's boxes")
        ax.plot(xs, [m["extra_boxes_share"] for m in minutes], marker="s", label="served boxes the reference lacks")
        ax.set_xlabel("minute of live traffic")
        ax.set_ylim(0, 1.05)
        ax.set_title("Shadow parity: served model vs its FP32 reference on live frames")
        ax.legend(fontsize=8)


def draw(image: np.ndarray, boxes: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    import cv2

    out = image.copy()
    for x1, y1, x2, y2 in boxes.round().astype(int):
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, 1)
    return out


def plot_worst(frames: list, path: Path) -> None:
    import cv2

    shown = frames[:WORST_SHOWN]
    with saved_figure(path, columns=2, size=(6, 3 * max(len(shown), 1))) as (fig, _):
        fig.clf()
        for row, frame in enumerate(shown):
            image = cv2.cvtColor(cv2.imread(str(frame.path)), cv2.COLOR_BGR2RGB)
            letterbox = frame.record["letterbox"]
            for column, (side, colour) in enumerate((("served", (255, 40, 40)), ("reference", (40, 200, 40)))):
                ax = fig.add_subplot(len(shown), 2, row * 2 + column + 1)
                ax.imshow(draw(image, to_input_pixels(frame.record[side], letterbox), colour))
                ax.set_title(f"{side}: {len(frame.record[side])} boxes (score {frame_score(frame.record):.2f})",
                             fontsize=8)
                ax.axis("off")


def budget_on_traffic(record: RepositoryRecord, frames: list, artifacts: Path) -> dict:
    """mAP50-95 of the served model and of the reference on the val split plus the evidence frames
    (labelled with the reference's boxes), on the repository's own files, against the budget."""
    from compress.budget import fits, points_below
    from compress.evaluate import VAL_CONF, VAL_IOU, LabelledImage, evaluate, mean_average_precision, val_split
    from compress.local_detector import LocalDetector
    from compress.manifest import Manifest
    from compress.records import Report

    data_yaml = Manifest(artifacts).output("dataset", "data_yaml")
    budget = Report.load(artifacts).served.budget_points
    traffic = [LabelledImage(f.path, to_input_pixels(f.record["reference"], f.record["letterbox"]),
                             np.array([b["class_id"] for b in f.record["reference"]], dtype=np.int64)) for f in frames]
    targets = val_split(data_yaml) + traffic
    reference_file = record.repo / "postprocess" / "1" / "reference.onnx"
    scores = {}
    # a TensorRT plan does not run in-process here: its gated ONNX stands in for it
    served_file = record.source_unchanged() if record.target == "tensorrt" else record.detector_file
    # the served file on the runtime it is served on (an OpenVINO IR on OpenVINO), the reference on ONNX Runtime
    served_runtime = {"runtime": record.settings.runtime, "precision": record.settings.openvino_precision}
    for name, path, runtime in (("served", served_file, served_runtime), ("reference", reference_file, {})):
        detector = LocalDetector(path, conf_threshold=VAL_CONF, iou_threshold=VAL_IOU,
                                 reduced_decode=record.settings.reduced_decode, **runtime)
        detections = []
        for start in range(0, len(targets), 8):
            detections += detector.detect([t.path.read_bytes() for t in targets[start:start + 8]])
        scores[name] = {"val_and_traffic": mean_average_precision(detections, targets),
                        "val": evaluate(detector.detect, data_yaml, desc=f"mAP {name} (val)")}
    drop = points_below(scores["reference"]["val_and_traffic"]["map50_95"], scores["served"]["val_and_traffic"]["map50_95"])
    return {"frames": len(traffic), "val_images": len(targets) - len(traffic), "maps": scores,
            "drop_points": drop, "budget_points": budget, "within_budget": fits(drop, budget)}


def to_markdown(result: dict) -> str:
    lines = ["# Shadow parity audit", "", f"Evidence: `{result['evidence_dir']}`: {result['frames_kept']} frames kept "
             f"({result['distinct_frames']} distinct) "
             f"(agreement below {result['min_frame_recall']}); {result['compared']} frames compared in the agreement log.",
             "", "![agreement over time](agreement_over_time.png)", ""]
    if result["worst"]:
        lines += ["| frame | score | served boxes | reference boxes | recall | extra boxes |", "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {w['frame']} | {w['score']:.2f} | {w['served_boxes']} | {w['reference_boxes']} | "
                  f"{w['box_recall']} | {w['extra_boxes']} |" for w in result["worst"]]
        lines += ["", "![worst frames](worst_frames.png)", ""]
    budget = result.get("budget")
    if budget:
        served, reference = budget["maps"]["served"], budget["maps"]["reference"]
        lines += [f"**Within the budget on this traffic: {'yes' if budget['within_budget'] else 'NO'}** (a pessimistic "
                  "check, not the whole gate: the kept frames are the ones that disagreed, labelled by the reference). "
                  "On the val split "
                  f"({budget['val_images']} images) plus {budget['frames']} evidence frames (the reference's boxes as "
                  f"labels), the served model scores mAP50-95 {served['val_and_traffic']['map50_95']} and the reference "
                  f"{reference['val_and_traffic']['map50_95']}: {budget['drop_points']} points below it, budget "
                  f"{budget['budget_points']} (val split alone: {served['val']['map50_95']} vs {reference['val']['map50_95']}).", ""]
    return "\n".join(lines)


def audit(repo: Path, out: Path, evidence: Path | None = None, artifacts: Path = Path("artifacts"),
          gate: bool = False) -> dict:
    record = RepositoryRecord.load(repo)
    if not record.settings.shadow:
        raise InputFileError(f"{repo} was built without shadow parity: there is no evidence to audit",
                             hint="rebuild it with `make repo` (SHADOW=1, the default)")
    folder = Path(evidence) if evidence else evidence_dir(record)
    store = EvidenceStore(folder)
    kept = store.frames()
    # the same frame comes back when cameras repeat a scene (a load test loops its frames): shown once
    frames = sorted(distinct(kept), key=lambda f: frame_score(f.record))
    log = store.agreement_log() if folder.exists() else []
    if not frames and not log:
        raise InputFileError(f"no evidence in {folder}: nothing was compared yet",
                             hint="send traffic to the server first (`make loadtest`), or point --evidence at the store")
    out.mkdir(parents=True, exist_ok=True)
    minutes = per_minute(log)
    plot_over_time(minutes, out / "agreement_over_time.png")
    if frames:
        plot_worst(frames, out / "worst_frames.png")
    result = {"evidence_dir": str(folder), "frames_kept": len(kept), "distinct_frames": len(frames), "compared": len(log),
              "min_frame_recall": record.settings.shadow_min_frame_recall, "per_minute": minutes,
              "worst": [{"frame": f.path.name, "score": round(frame_score(f.record), 4),
                         "served_boxes": len(f.record["served"]), "reference_boxes": len(f.record["reference"]),
                         **{k: f.record["summary"][k] for k in ("box_recall", "extra_boxes")}}
                        for f in frames[:WORST_SHOWN * 2]]}
    if gate and frames:  # no kept frame: nothing disagreed enough to add to the val split
        result["budget"] = budget_on_traffic(record, frames, artifacts)
    (out / "audit.json").write_text(json.dumps(result, indent=2))
    (out / "audit.md").write_text(to_markdown(result))
    return result


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=Path("model_repository"))
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--evidence", type=Path, help="the evidence store (default: the repository's evidence_dir)")
    parser.add_argument("--out", type=Path, help="default: <artifacts>/audit")
    parser.add_argument("--gate", action="store_true",
                        help="also: mAP of the served model vs the reference on the val split + these frames, vs the budget")
    args = parser.parse_args(argv)
    result = audit(args.repo, args.out or args.artifacts / "audit", args.evidence, args.artifacts, args.gate)
    print(to_markdown(result))
    print(f"report: {args.out or args.artifacts / 'audit'}/audit.md")


if __name__ == "__main__":
    main()
