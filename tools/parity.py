"""Accuracy parity gate: is the compressed detector still seeing what the original saw?

    python -m tools.parity                          # `make parity`; exit 3 with a summary if the gate fails
    python -m tools.parity --deployed model_repository  # `make verify`: served vs offline mAP of the deployed repo

1. Polygraphy (Comparator + per-output CompareFunc.simple) on real val images, fed through a
   Polygraphy data loader: torch vs its FP32 ONNX, FP32 ONNX vs INT8 ONNX, TensorRT plan vs
   ONNX (where TensorRT exists). Raw head outputs are decoded first and compared as separate
   outputs with their own tolerances: boxes in pixels and class scores on the anchors the
   reference is confident about (a whole-output comparison passes broken models).
2. Task level: detections matched by IoU (recall of reference boxes, score drift, class
   flips) and mAP50-95 deltas, against the FP32 model and the equal-budget baseline.
   Only a model that passes is recorded as servable (`served.json`, tied to its hash).
   After `make repo`, `--deployed` measures the repository as deployed (its thresholds and
   tuned settings) through the live Triton server against the same model in-process.
3. Sensitivity: ONNX Runtime's Q/DQ debugger ranks quantized convs by SQNR; if the gate
   fails, the most sensitive are kept in float, a few more at a time, until it holds.
Artifacts land in <artifacts>/parity/ (inputs, outputs, statistics, parity.json/.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from compress.detection import box_iou, decode_raw_head, prepare_image
from compress.errors import GateFailedError, InputFileError, cli_entry
from compress.evaluate import evaluate, evaluate_onnx, val_split
from compress.export import read_info
from compress.manifest import Manifest, clear_served, file_hash, record_served
from compress.quantize import conv_sensitivity
from compress.report import served_choice

PARITY_CONF = 0.25  # detections compared at a deployment threshold
# With ALLOW_OVER_BUDGET=1 the served model is knowingly over the budget; the gate then only stops a
# compression that went badly wrong.
GATE_MAP_ALLOWANCE_POINTS = 8.0
NO_REFERENCE = "detections of the FP32 model on the val split"
TOP_ANCHORS = 50


@dataclass
class Gate:
    max_map_drop_vs_fp32: float = 1.0  # points: INT8 vs the FP32 model it was quantized from
    # points: served model vs the fair reference. None: the accuracy budget the report served the
    # model under (MAX_MAP_DROP), or GATE_MAP_ALLOWANCE_POINTS when the user allowed going over it.
    max_map_drop_vs_baseline: float | None = None
    min_box_recall: float = 0.90  # reference boxes found again (IoU >= 0.5, same class)
    max_score_drift: float = 0.05  # mean |score change| of matched boxes
    max_class_flips: float = 0.02  # share of matched boxes whose class changed
    detection_conf: float = PARITY_CONF  # threshold of the detections compared task-level
    box_atol_frac: float = 0.004  # Polygraphy: median |box error| on compared anchors, share of image side
    score_atol: float = 0.02  # Polygraphy: mean |score error| on compared anchors


# -- Polygraphy --------------------------------------------------------------------------------

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
        # Anchors the reference is confident about, and always its 50 best per image, so a weak
        # model still gets a non-empty comparison.
        top = np.argsort(-confidence, axis=1)[:, :TOP_ANCHORS]
        mask = confidence > PARITY_CONF
        np.put_along_axis(mask, top, True, axis=1)
        for _, iterations in results:
            out = iterations[iteration]
            pred = decode_raw_head(out["box_logits"], out["class_logits"], info.image_size, info.strides)
            decoded = {"boxes": np.ascontiguousarray(pred[:, :4].transpose(0, 2, 1)[mask]),  # [N, 4] xywh px
                       "scores": np.ascontiguousarray(pred[:, 4:].transpose(0, 2, 1)[mask])}  # [N, nc]
            iterations[iteration] = IterationResult(decoded, out.runtime, out.runner_name)


def polygraphy_compare(name: str, runners: list, feeds: list[dict], info, gate: Gate, out_dir: Path) -> dict:
    from polygraphy.comparator import Comparator, SimpleCompareFunc
    from polygraphy.logger import G_LOGGER

    out_dir.mkdir(parents=True, exist_ok=True)
    box_atol = gate.box_atol_frac * max(info.image_size)
    compare = SimpleCompareFunc(atol={"boxes": box_atol, "scores": gate.score_atol}, rtol={"": 0.0},
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


# -- task level --------------------------------------------------------------------------------

def detection_agreement(reference: list, candidate: list) -> dict:
    """Recall of reference boxes, score drift and class flips between two detectors' outputs."""
    total = found = flips = matched = 0
    drift = []
    for ref, cand in zip(reference, candidate):
        total += len(ref)
        if not len(ref) or not len(cand):
            continue
        iou = box_iou(ref.boxes, cand.boxes)
        same_class = ref.classes[:, None] == cand.classes[None, :]
        for i in range(len(ref)):
            overlapping = iou[i] >= 0.5
            if not overlapping.any():
                continue
            matched += 1
            hits = overlapping & same_class[i]
            if hits.any():
                found += 1
                j = int(np.argmax(np.where(hits, iou[i], -1)))
                drift.append(abs(float(ref.scores[i]) - float(cand.scores[j])))
            else:
                flips += 1
    return {"reference_boxes": total, "box_recall": round(found / max(total, 1), 4),
            "score_drift": round(float(np.mean(drift)) if drift else 0.0, 4),
            "class_flips": round(flips / max(matched, 1), 4)}


def task_parity(reference_onnx: Path, candidate_onnx: Path, data_yaml: Path, conf: float = PARITY_CONF) -> dict:
    from compress.local_detector import LocalDetector

    payloads = [item.path.read_bytes() for item in val_split(data_yaml)]
    ref = LocalDetector(reference_onnx, conf_threshold=conf).detect(payloads)
    # A reference box counts as found if the candidate has it at half the threshold: a box
    # whose score moved from 0.26 to 0.24 is score drift (gated on its own), not a lost box.
    cand = LocalDetector(candidate_onnx, conf_threshold=conf / 2).detect(payloads)
    return detection_agreement(ref, cand)


def deployed_map(repo: Path, data_yaml: Path, log_dir: Path, full_decode_reference: bool = False) -> dict:
    """mAP of the repository as deployed (its model, thresholds, batching, instances and decode)
    through the live Triton server, beside the same model in-process at the same thresholds.
    With `full_decode_reference`, also in-process with every pixel decoded (what Ultralytics
    does), the reference for the reduced JPEG decode on camera-sized frames."""
    from compress.local_detector import LocalDetector
    from tools.client import TritonDetectorClient
    from tools.server import TritonServer

    record_path = Path(repo) / "repository.json"
    if not record_path.exists():
        raise InputFileError(f"{repo} has no repository.json", hint="build it first with `make repo`")
    record = json.loads(record_path.read_text())
    settings = record["settings"]
    if settings.get("target") != "local":
        from compress.plan import NO_TENSORRT

        why = NO_TENSORRT if settings.get("target") == "tensorrt" else \
            "the onnxruntime backend exists only in the NGC tritonserver container"
        return {"skipped": f"target {settings.get('target')!r} cannot be served on this machine: {why}"}
    model = Path(repo) / "detector" / "1" / "model.onnx"
    thresholds = dict(conf_threshold=settings["conf_threshold"], iou_threshold=settings["iou_threshold"],
                      max_det=settings["max_det"])
    reduced = settings.get("reduced_decode", True)
    offline = LocalDetector(model, reduced_decode=reduced, **thresholds)
    result = {"repo": str(repo), "model_sha256": record["model_sha256"], "stage": record.get("stage"),
              "conf_threshold": settings["conf_threshold"], "iou_threshold": settings["iou_threshold"],
              "reduced_decode": reduced, "offline": evaluate(offline.detect, data_yaml, desc="mAP offline")}
    if full_decode_reference:
        full = LocalDetector(model, reduced_decode=False, **thresholds)
        result["offline_full_decode"] = evaluate(full.detect, data_yaml, desc="mAP offline, full decode")
    with TritonServer(Path(repo), log_path=Path(log_dir) / "server.log") as server:
        with TritonDetectorClient(server.grpc_url, "grpc") as client:
            result["served"] = evaluate(client.detect, data_yaml, desc="mAP served")
    return result


# Served mAP on camera frames (reduced JPEG decode) against every pixel decoded in-process
MAX_REDUCED_DECODE_DELTA = 0.3


def verify_deployed(repo: Path, artifacts: Path, max_delta_points: float, frames: str | None = None) -> dict:
    """The served-vs-offline check on the deployed repository; writes <artifacts>/parity/deployed.json
    (deployed_<frames>.json/.md for another frame set, with the full-decode comparison)."""
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
        delta = round(abs(result["served"]["map50_95"] - result["offline"]["map50_95"]) * 100, 2)
        result.update(delta_points=delta, max_delta_points=max_delta_points, passed=delta <= max_delta_points)
        if "offline_full_decode" in result:
            full_delta = round((result["served"]["map50_95"] - result["offline_full_decode"]["map50_95"]) * 100, 2)
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


# -- sensitivity and mixed precision -------------------------------------------------------

# -- the gate ------------------------------------------------------------------------------

def check(gate: Gate, measured: dict) -> list[tuple[str, str, str, bool]]:
    """(check, wanted, measured, passed) rows."""
    rows = []

    def add(name, wanted, value, ok):
        rows.append((name, wanted, value, bool(ok)))

    for comparison in measured["polygraphy"]:
        stats = comparison["stats"]
        add(f"polygraphy {comparison['name']}", f"boxes median <= {comparison['box_atol_px']} px, scores mean <= {gate.score_atol}",
            f"boxes {stats.get('boxes', {}).get('median_absdiff')} px, scores {stats.get('scores', {}).get('mean_absdiff')}",
            comparison["passed"])
    task, maps = measured["task"], measured["map"]
    if not task["reference_boxes"]:
        # Nothing to match: the FP32 model itself finds nothing at the deployment threshold, so
        # served at it the model would answer every frame with no boxes.
        add(NO_REFERENCE, f">= 1 at conf {gate.detection_conf}", 0, False)
    else:
        add("box recall vs FP32", f">= {gate.min_box_recall}", task["box_recall"],
            task["box_recall"] >= gate.min_box_recall)
        add("score drift", f"<= {gate.max_score_drift}", task["score_drift"], task["score_drift"] <= gate.max_score_drift)
        add("class flips", f"<= {gate.max_class_flips}", task["class_flips"],
            task["class_flips"] <= gate.max_class_flips)
    drop_fp32 = round((maps["fp32"] - maps["int8"]) * 100, 2)
    add("mAP50-95 drop vs FP32 (points)", f"<= {gate.max_map_drop_vs_fp32}", drop_fp32, drop_fp32 <= gate.max_map_drop_vs_fp32)
    drop_base = round((maps["baseline"] - maps["int8"]) * 100, 2)
    allowance = GATE_MAP_ALLOWANCE_POINTS if gate.max_map_drop_vs_baseline is None else gate.max_map_drop_vs_baseline
    add("mAP50-95 drop vs equal-budget baseline (points)", f"<= {allowance}", drop_base, drop_base <= allowance)
    return rows


def measure(fp32: Path, int8: Path, baseline_onnx: Path, data_yaml: Path, gate: Gate, out_dir: Path,
            torch_weights: Path | None = None, plan: Path | None = None) -> dict:
    from tools.runners import TorchRunner, onnx_runner, tensorrt_runner

    info = read_info(int8)
    feeds = val_feeds(data_yaml, info.image_size)
    comparisons = [polygraphy_compare("fp32_vs_int8", [onnx_runner(fp32, "onnx-fp32"), onnx_runner(int8, "onnx-int8")],
                                      feeds, info, gate, out_dir)]
    if torch_weights:
        comparisons.append(polygraphy_compare(
            "torch_vs_onnx", [TorchRunner(torch_weights, info.image_size, name="torch"), onnx_runner(fp32, "onnx-fp32")],
            feeds, info, gate, out_dir))
    skipped = {}
    if plan:
        comparisons.append(polygraphy_compare("onnx_vs_tensorrt", [onnx_runner(int8, "onnx-int8"),
                                                                   tensorrt_runner(plan, "trt-int8")],
                                              feeds, info, gate, out_dir))
    else:
        from compress.plan import NO_TENSORRT

        skipped["onnx_vs_tensorrt"] = NO_TENSORRT
    maps = {"fp32": evaluate_onnx(fp32, data_yaml)["map50_95"], "int8": evaluate_onnx(int8, data_yaml)["map50_95"],
            "baseline": evaluate_onnx(baseline_onnx, data_yaml)["map50_95"]}
    return {"polygraphy": comparisons, "skipped": skipped, "task": task_parity(fp32, int8, data_yaml, gate.detection_conf),
            "map": maps}


def mixed_precision(fp32: Path, data_yaml: Path, ranking: list[dict], base_float: list[str], gate: Gate,
                    baseline_onnx: Path, out_dir: Path, quantize_settings: dict, max_layers: int = 12):
    """Keep the most sensitive convs in float, 1, 2, 4, ... at a time, until the gate holds."""
    from compress.quantize import quantize

    info = read_info(fp32)
    tried = []
    for count in sorted({n for n in (1, 2, 4, 8, max_layers) if n <= min(max_layers, len(ranking))}):
        kept = [r["conv"] for r in ranking[:count]]
        candidate = out_dir / f"int8_mixed_{count}.onnx"
        quantize(fp32, candidate, data_yaml, info.image_size, float_nodes=base_float + kept, **quantize_settings)
        measured = measure(fp32, candidate, baseline_onnx, data_yaml, gate, out_dir / f"mixed_{count}")
        rows = check(gate, measured)
        tried.append({"float_convs": kept, "onnx": str(candidate), "passed": all(r[3] for r in rows),
                      "map50_95": measured["map"]["int8"]})
        print(f"    mixed precision: {count} more conv(s) in float -> mAP50-95 {measured['map']['int8']}, "
              f"gate {'holds' if tried[-1]['passed'] else 'fails'}", flush=True)
        if tried[-1]["passed"]:
            return candidate, tried
    return None, tried


def latency_cost(int8: Path, kept_models: list[Path], image_size) -> list[float]:
    from compress.benchmark import measure_in_subprocess

    models = {"int8": int8, **{f"k{i}": p for i, p in enumerate(kept_models)}}
    lat = measure_in_subprocess(models, image_size, rounds={1: 20, 8: 5})
    return [round(lat[f"k{i}"]["bs1_ms"] - lat["int8"]["bs1_ms"], 3) for i in range(len(kept_models))]


def to_markdown(result: dict) -> str:
    lines = [f"# Parity gate: {'PASS' if result['passed'] else 'FAIL'}", "",
             "| check | wanted | measured | ok |", "|---|---|---|---|"]
    lines += [f"| {name} | {wanted} | {value} | {'PASS' if ok else 'FAIL'} |" for name, wanted, value, ok in result["checks"]]
    for name, why in result["measured"]["skipped"].items():
        lines.append(f"| {name} | skipped | {why} | - |")
    lines += ["", "Most quantization-sensitive convs (SQNR of their outputs, float vs Q/DQ, lower is worse):", ""]
    lines += [f"- `{r['conv']}`: {r['sqnr_db']} dB" for r in result["sensitivity"][:8]]
    if result.get("mixed_precision"):
        mp = result["mixed_precision"]
        lines += ["", f"Mixed precision: kept in float {mp['float_convs']}; bs1 latency cost {mp['latency_cost_ms']} ms."]
    return "\n".join(lines) + "\n"


def run_gate(artifacts: Path, gate: Gate, allow_mixed_precision: bool = True) -> dict:
    manifest = Manifest(artifacts)
    out_dir = artifacts / "parity"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    candidate = served_choice(artifacts)
    # An FP32 candidate (no INT8 one fits the budget) is compared with itself: the quantization
    # checks hold trivially and the accuracy check against the reference still applies.
    fp32, int8 = candidate["fp32_onnx"], candidate["onnx"]
    if gate.max_map_drop_vs_baseline is None:
        over = candidate["allow_over_budget"] and not candidate["within_budget"]
        gate = replace(gate, max_map_drop_vs_baseline=GATE_MAP_ALLOWANCE_POINTS if over else candidate["budget_points"])
    # Accuracy is held against the equal-budget baseline (the unpruned model given the same extra
    # epochs), or the original baseline where the extra epochs made it worse.
    data_yaml = manifest.output("dataset", "data_yaml")
    baseline_onnx = max((manifest.output("finetune", "onnx"), manifest.output("export", "onnx")),
                        key=lambda path: evaluate_onnx(path, data_yaml)["map50_95"])
    clear_served(artifacts)  # whatever was gated before is not what is measured now
    plan_record = manifest.get("plan")
    plan = manifest.output("plan", "int8_plan") if plan_record and "int8_plan" in plan_record.outputs else None
    if plan and plan_record.inputs.get("served") != file_hash(int8):
        plan = None  # built from another served model
    measured = measure(fp32, int8, baseline_onnx, data_yaml, gate, out_dir, torch_weights=candidate["weights"],
                       plan=plan)
    checks = check(gate, measured)
    info = read_info(int8)
    sensitivity = conv_sensitivity(fp32, int8, data_yaml, info.image_size) if candidate["precision"] == "int8" else []
    result = {"gate": asdict(gate), "measured": measured, "checks": checks, "sensitivity": sensitivity,
              "passed": all(c[3] for c in checks), "served_onnx": str(int8), "candidate": candidate["name"],
              "precision": candidate["precision"]}
    # Float layers can only win back what quantization lost; a pruned model that trails the
    # equal-budget baseline needs more training or less pruning instead.
    quantization_failed = [name for name, _, _, ok in checks
                           if not ok and "baseline" not in name and name != NO_REFERENCE]
    if not result["passed"] and not quantization_failed:
        result["advice"] = ("what fails is the pruned model itself, not its quantization (float layers cannot "
                            "help): a larger budget (MAX_MAP_DROP=), longer distillation (DISTILL_EPOCHS=) or "
                            "lower --detection-conf if the model is meant to run at a lower threshold")
    if allow_mixed_precision and quantization_failed and candidate["precision"] == "int8":
        quant = candidate["quantization"]
        settings = {"method": quant["calibration"], "calibration_count": quant["calibration_images"]}
        best, tried = mixed_precision(fp32, data_yaml, sensitivity, quant["float_nodes"], gate, baseline_onnx, out_dir,
                                      settings)
        result["mixed_precision_tried"] = tried
        if best is not None:
            kept = tried[-1]["float_convs"]
            result["mixed_precision"] = {"float_convs": kept, "onnx": str(best),
                                         "latency_cost_ms": latency_cost(int8, [Path(t["onnx"]) for t in tried],
                                                                         info.image_size)}
            measured = measure(fp32, best, baseline_onnx, data_yaml, gate, out_dir / "final")
            result.update(measured=measured, checks=check(gate, measured), served_onnx=str(best))
            result["passed"] = all(c[3] for c in result["checks"])
    if result["passed"]:
        chosen = Path(result["served_onnx"])
        trt_onnx = manifest.output("plan", "trt_onnx") if plan and chosen == int8 else None  # same Q/DQ choices only
        record_served(artifacts, candidate["name"], chosen, trt_onnx, mixed_precision=chosen != int8)
    (out_dir / "parity.json").write_text(json.dumps(result, indent=2, default=str))
    (out_dir / "parity.md").write_text(to_markdown(result))
    return result


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--deployed", type=Path, metavar="REPO",
                        help="instead of the gate: served-vs-offline mAP of this built repository")
    parser.add_argument("--frames", help="with --deployed: a labelled frame set (dataset, 480p, 720p, 1080p or a "
                        "folder with a data.yaml); camera sizes are also compared with every pixel decoded")
    parser.add_argument("--max-served-delta", type=float, default=0.2,
                        help="points of mAP50-95 the served repository may differ from the same model offline")
    parser.add_argument("--no-mixed-precision", action="store_true",
                        help="report a failing gate as is instead of keeping sensitive layers in float")
    for field, default in asdict(Gate()).items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=float, default=default,
                            help="default: MAX_MAP_DROP of the report" if default is None else None)
    args = parser.parse_args(argv)
    if args.deployed:
        result = verify_deployed(args.deployed, args.artifacts, args.max_served_delta, args.frames)
        print(json.dumps(result, indent=2))
        if not result.get("passed", True):
            raise GateFailedError(f"served mAP50-95 differs from offline by {result['delta_points']} points "
                                  f"(allowed {args.max_served_delta})", hint=f"details in {args.artifacts}/parity/")
        return
    gate = Gate(**{f: getattr(args, f) for f in asdict(Gate())})
    result = run_gate(args.artifacts, gate, allow_mixed_precision=not args.no_mixed_precision)
    print(to_markdown(result))
    if not result["passed"]:
        failed = [f"{name}: {value} (wanted {wanted})" for name, wanted, value, ok in result["checks"] if not ok]
        raise GateFailedError("parity gate FAILED: " + "; ".join(failed),
                              hint=result.get("advice") or f"details in {args.artifacts}/parity/")


if __name__ == "__main__":
    main()
