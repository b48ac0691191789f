"""The deployed repository through the live server (`make verify`): does it detect what the same
model does in-process?

The repository is measured as deployed: its model, thresholds, batching, instances and decode,
through the real Triton server, beside the same model in-process with the same configuration
(tools.repository.RepositoryRecord.in_process_detector). On camera-sized frames it is also
compared with every pixel decoded in-process (what Ultralytics does): the reduced JPEG decode's
accuracy cost. Writes <artifacts>/parity/deployed.json/.md (deployed_<frames>.* for other frames).
"""

from __future__ import annotations

import json
from pathlib import Path

from compress.budget import points_below
from compress.errors import InputFileError
from compress.evaluate import evaluate
from tools.repository import RepositoryRecord

# Served mAP on camera frames (reduced JPEG decode) against every pixel decoded in-process
MAX_REDUCED_DECODE_DELTA = 0.3
# Served vs the same model in-process, same decode: they run the same code, so only batching noise
MAX_SERVED_DELTA = 0.2


def deployed_map(repo: Path, data_yaml: Path, log_dir: Path, full_decode_reference: bool = False) -> dict:
    """mAP of the repository as deployed through the live server, beside the same model in-process
    with the deployed configuration (and, with `full_decode_reference`, with every pixel decoded)."""
    from tools.client import TritonDetectorClient
    from tools.server import TritonServer

    record = RepositoryRecord.load(repo)
    why_not = record.servable_here()
    if why_not:
        return {"skipped": f"target {record.target!r} cannot be served on this machine: {why_not}"}
    s = record.settings
    result = {"repo": str(repo), "model_sha256": record.model_sha256, "stage": record.stage,
              "conf_threshold": s.conf_threshold, "iou_threshold": s.iou_threshold, "max_det": s.max_det,
              "reduced_decode": s.reduced_decode,
              "offline": evaluate(record.in_process_detector().detect, data_yaml, desc="mAP offline")}
    if full_decode_reference:
        result["offline_full_decode"] = evaluate(record.in_process_detector(reduced_decode=False).detect, data_yaml,
                                                 desc="mAP offline, full decode")
    with TritonServer(Path(repo), log_path=Path(log_dir) / "server.log") as server:
        with TritonDetectorClient(server.grpc_url, "grpc") as client:
            result["served"] = evaluate(client.detect, data_yaml, desc="mAP served")
    return result


def verify_deployed(repo: Path, artifacts: Path, max_delta_points: float = MAX_SERVED_DELTA,
                    frames: str | None = None) -> dict:
    """The served-vs-offline check on the deployed repository; writes its report under <artifacts>/parity/."""
    from tools.frame_sets import DATASET_ALIASES, resolve_frames

    frame_set = resolve_frames(frames, artifacts)
    other_frames = frames not in (None, "") and str(frames) not in DATASET_ALIASES  # a folder may be named "dataset"
    if frame_set.data_yaml is None:
        raise InputFileError(f"frame set {frame_set.name!r} has no labels: mAP cannot be measured on it",
                             hint="use FRAMES=dataset, 480p, 720p or 1080p, or a folder with a data.yaml")
    out_dir = Path(artifacts) / "parity"
    out_dir.mkdir(parents=True, exist_ok=True)
    result = deployed_map(repo, frame_set.data_yaml, out_dir, full_decode_reference=other_frames)
    result["frame_set"] = frame_set.record()
    if "skipped" not in result:
        delta = abs(points_below(result["offline"]["map50_95"], result["served"]["map50_95"]))
        result.update(delta_points=delta, max_delta_points=max_delta_points, passed=delta <= max_delta_points)
        if "offline_full_decode" in result:
            # served minus every pixel decoded: negative when the reduced decode costs accuracy
            full_delta = -points_below(result["offline_full_decode"]["map50_95"], result["served"]["map50_95"])
            result.update(full_decode_delta_points=full_delta, max_full_decode_delta_points=MAX_REDUCED_DECODE_DELTA,
                          full_decode_within=abs(full_delta) <= MAX_REDUCED_DECODE_DELTA)
    stem = f"deployed_{frame_set.name}" if other_frames else "deployed"
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2))
    (out_dir / f"{stem}.md").write_text(deployed_markdown(result))
    return result


def deployed_markdown(result: dict) -> str:
    from compress.env import describe_machine, machine_line

    if "skipped" in result:
        return f"# Served mAP\n\nSkipped: {result['skipped']}\n"
    fs = result["frame_set"]
    lines = [f"# Served mAP on {fs['name']} frames ({fs['width']}x{fs['height']})", "", machine_line(describe_machine()), "",
             f"Deployed configuration: conf {result['conf_threshold']}, NMS IoU {result['iou_threshold']}, "
             f"at most {result['max_det']} boxes per frame.", "",
             "| path | mAP50 | mAP50-95 |", "|---|---:|---:|",
             f"| served (Triton, {'reduced' if result['reduced_decode'] else 'full'} JPEG decode) | "
             f"{result['served']['map50']:.4f} | {result['served']['map50_95']:.4f} |",
             f"| in-process, same decode | {result['offline']['map50']:.4f} | {result['offline']['map50_95']:.4f} |"]
    if "offline_full_decode" in result:
        lines.append(f"| in-process, every pixel decoded | {result['offline_full_decode']['map50']:.4f} | "
                     f"{result['offline_full_decode']['map50_95']:.4f} |")
    lines += ["", f"Served vs in-process, same decode: {result['delta_points']} points (allowed {result['max_delta_points']}): "
              f"{'PASS' if result['passed'] else 'FAIL'}."]
    if "offline_full_decode" in result:
        lines.append(f"Served vs every pixel decoded: {result['full_decode_delta_points']:+.2f} points "
                     f"(goal within {result['max_full_decode_delta_points']}): "
                     f"{'met' if result['full_decode_within'] else 'missed'}.")
    return "\n".join(lines) + "\n"
