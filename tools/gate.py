"""The accuracy parity gate (`make parity`): is the compressed detector still seeing what the original saw?

It judges the report's serving choice (compress.records.Report), never a model of its own:
1. Polygraphy (tools.compare) on real val images: torch vs its FP32 ONNX, FP32 ONNX vs INT8
   ONNX, TensorRT plan vs ONNX (where TensorRT exists).
2. Task level (tools.agreement): detections matched by IoU (recall of reference boxes, score
   drift, class flips) at the deployment threshold, and mAP50-95 against the FP32 twin and the
   reference, as the report measured them (the reference is the one the search chose).
3. Sensitivity: ONNX Runtime's Q/DQ debugger ranks the quantized convs by SQNR. If a
   quantization check fails, the one keep-float loop (compress.budget.keep_float) keeps the most
   sensitive convs in float, a few more at a time, as candidates of their own
   (compress.candidates.float_variant), until the gate holds. The refused choice and the variant
   are recorded (compress.records.GateVerdicts) and the report is measured again, so what the
   gate passes is a row the report measured and chose; that choice is then gated in turn (at
   most MAX_ROUNDS refusals; the choice after the last one is judged, not refused again).
Only a model that passes is recorded as servable (`served.json`, tied to its bytes). Artifacts
land in <artifacts>/parity/ (inputs, outputs, statistics, parity.json/.md).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from compress.budget import MIXED_PRECISION_COUNTS, fits, keep_float, points_below
from compress.candidates import CandidateRecord, float_variant
from compress.detection import SERVED_CONF
from compress.export import read_info
from compress.manifest import Manifest, file_hash, relative_to
from compress.quantize import conv_sensitivity
from compress.records import GatedModel, GateVerdicts, Report, SearchRecord, ServedChoice
from tools.agreement import shadow_baseline, task_parity
from tools.compare import polygraphy_compare, val_feeds

# With ALLOW_OVER_BUDGET=1 the served model is knowingly over the budget; the gate then only stops a
# compression that went badly wrong.
GATE_MAP_ALLOWANCE_POINTS = 8.0
NO_REFERENCE = "detections of the FP32 model on the val split"
VS_FP32, VS_REFERENCE = "mAP50-95 drop vs FP32 (points)", "mAP50-95 drop vs the reference (points)"
# A refused choice makes the report choose again; after this many refusals the gate stops and fails.
MAX_ROUNDS = 3


@dataclass
class Gate:
    max_map_drop_vs_fp32: float = 1.0  # points: INT8 vs the FP32 model it was quantized from
    # points: served model vs the fair reference. None: the accuracy budget the report served the
    # model under (MAX_MAP_DROP), or GATE_MAP_ALLOWANCE_POINTS when the user allowed going over it.
    max_map_drop_vs_baseline: float | None = None
    min_box_recall: float = 0.90  # reference boxes found again (IoU >= 0.5, same class)
    max_score_drift: float = 0.05  # mean |score change| of matched boxes
    max_class_flips: float = 0.02  # share of matched boxes whose class changed
    detection_conf: float = SERVED_CONF  # threshold of the detections compared task-level: the deployed one
    box_atol_frac: float = 0.004  # Polygraphy: median |box error| on compared anchors, share of image side
    score_atol: float = 0.02  # Polygraphy: mean |score error| on compared anchors

    def for_choice(self, served: ServedChoice) -> "Gate":
        """The allowance against the reference made explicit: the report's budget, unless set."""
        if self.max_map_drop_vs_baseline is not None:
            return self
        over = served.allow_over_budget and not served.within_budget
        return replace(self, max_map_drop_vs_baseline=GATE_MAP_ALLOWANCE_POINTS if over else served.budget_points)


def measure(fp32: Path, int8: Path, maps: dict, data_yaml: Path, gate: Gate, out_dir: Path,
            torch_weights: Path | None = None, plan: Path | None = None) -> dict:
    """Polygraphy and task-level measurements of `int8` against its FP32 twin; `maps` are the
    mAP50-95 of {"fp32", "int8", "reference"} as the report measured them."""
    from compress.plan import NO_TENSORRT
    from tools.runners import TorchRunner, onnx_runner, tensorrt_runner

    info = read_info(int8)
    feeds = val_feeds(data_yaml, info.image_size)
    tolerances = (gate.box_atol_frac, gate.score_atol)
    comparisons = [polygraphy_compare("fp32_vs_int8", [onnx_runner(fp32, "onnx-fp32"), onnx_runner(int8, "onnx-int8")],
                                      feeds, info, *tolerances, out_dir)]
    if torch_weights:
        comparisons.append(polygraphy_compare(
            "torch_vs_onnx", [TorchRunner(torch_weights, info.image_size, name="torch"), onnx_runner(fp32, "onnx-fp32")],
            feeds, info, *tolerances, out_dir))
    skipped = {}
    if plan:
        comparisons.append(polygraphy_compare("onnx_vs_tensorrt", [onnx_runner(int8, "onnx-int8"),
                                                                   tensorrt_runner(plan, "trt-int8")],
                                              feeds, info, *tolerances, out_dir))
    else:
        skipped["onnx_vs_tensorrt"] = NO_TENSORRT
    return {"polygraphy": comparisons, "skipped": skipped, "task": task_parity(fp32, int8, data_yaml, gate.detection_conf),
            "map": dict(maps)}


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
    drop_fp32 = points_below(maps["fp32"], maps["int8"])
    add(VS_FP32, f"<= {gate.max_map_drop_vs_fp32}", drop_fp32, fits(drop_fp32, gate.max_map_drop_vs_fp32))
    drop_reference = points_below(maps["reference"], maps["int8"])
    allowance = GATE_MAP_ALLOWANCE_POINTS if gate.max_map_drop_vs_baseline is None else gate.max_map_drop_vs_baseline
    add(VS_REFERENCE, f"<= {allowance}", drop_reference, fits(drop_reference, allowance))
    return rows


def quantization_failures(checks: list[tuple[str, str, str, bool]]) -> list[str]:
    """Failed checks that float layers can win back: not the accuracy against the reference (the
    pruned model itself) and not the reference finding nothing."""
    return [name for name, _, _, ok in checks if not ok and name not in (VS_REFERENCE, NO_REFERENCE)
            and name != "polygraphy torch_vs_onnx"]


def report_maps(report: Report, reference_key: str) -> dict:
    """mAP50-95 of the choice, its FP32 twin and the reference, from the report's rows."""
    rows = {row["key"]: row for row in report.data["rows"]}
    chosen = rows[report.served.key]
    return {"int8": chosen["map50_95"], "fp32": rows[chosen["twin"]]["map50_95"] if chosen["twin"] else chosen["map50_95"],
            "reference": rows[reference_key]["map50_95"]}


def to_markdown(result: dict) -> str:
    lines = [f"# Parity gate: {'PASS' if result['passed'] else 'FAIL'}", "",
             f"Judged: **{result['candidate']}** ({result['precision']}), the report's choice.", "",
             "| check | wanted | measured | ok |", "|---|---|---|---|"]
    lines += [f"| {name} | {wanted} | {value} | {'PASS' if ok else 'FAIL'} |" for name, wanted, value, ok in result["checks"]]
    for name, why in result["measured"]["skipped"].items():
        lines.append(f"| {name} | skipped | {why} | - |")
    if result["sensitivity"]:
        lines += ["", "Most quantization-sensitive convs (SQNR of their outputs, float vs Q/DQ, lower is worse):", ""]
        lines += [f"- `{r['conv']}`: {r['sqnr_db']} dB" for r in result["sensitivity"][:8]]
    for refusal in result.get("refused", []):
        variant = refusal.get("variant")
        lines += ["", f"Refused {refusal['candidate']} (failed: {', '.join(refusal['failed'])}); mixed precision "
                      + (f"made {variant} (kept in float: {', '.join(refusal['float_convs'])}), measured by the report "
                         "beside every other row." if variant else
                         f"did not hold with up to {refusal['tried']} conv(s) in float; the report chose again.")]
    baseline = result.get("shadow_baseline")
    if baseline:
        agreement, drift = baseline["agreement"], baseline["drift"]
        lines += ["", f"Shadow baseline (written into the repository; live agreement is held against it): vs the "
                      f"reference ({baseline['reference']}) at conf {baseline['conf']}, box recall {agreement['box_recall']}, "
                      f"extra boxes {agreement['extra_boxes']}; {drift['detections_per_frame']} detections per frame, "
                      f"mean confidence {drift['mean_confidence']} on {drift['frames']} val images."]
    if result.get("advice"):
        lines += ["", f"Advice: {result['advice']}"]
    return "\n".join(lines) + "\n"


def _plan_for(manifest: Manifest, onnx: Path) -> tuple[Path | None, Path | None]:
    """(INT8 plan, its TensorRT Q/DQ twin) when the plan stage built them from `onnx`."""
    record = manifest.get("plan")
    if not record or "int8_plan" not in record.outputs or record.inputs.get("served") != file_hash(onnx):
        return None, None
    return manifest.output("plan", "int8_plan"), manifest.output("plan", "trt_onnx")


def _judge(choice: ServedChoice, maps: dict, gate: Gate, data_yaml: Path, out_dir: Path, plan: Path | None) -> dict:
    measured = measure(choice.fp32_onnx, choice.onnx, maps, data_yaml, gate, out_dir, torch_weights=choice.weights,
                       plan=plan)
    checks = check(gate, measured)
    sensitivity = (conv_sensitivity(choice.fp32_onnx, choice.onnx, data_yaml, read_info(choice.onnx).image_size)
                   if choice.precision == "int8" else [])
    return {"gate": asdict(gate), "measured": measured, "checks": checks, "sensitivity": sensitivity,
            "passed": all(c[3] for c in checks), "served_onnx": str(choice.onnx), "candidate": choice.name,
            "precision": choice.precision}


def _mixed_precision(choice: ServedChoice, result: dict, maps: dict, gate: Gate, data_yaml: Path,
                     out_dir: Path, counts: tuple[int, ...]) -> dict:
    """The keep-float loop on the refused choice, judged by the gate's checks."""
    artifacts = Path(out_dir).parent
    base = CandidateRecord.load(artifacts / "search" / choice.name / "candidate.json", artifacts, choice.name)
    made: dict = {}

    def judge(kept: list[str]) -> tuple[bool, dict]:
        variant, _ = float_variant(base, kept, data_yaml)
        variant_maps = {**maps, "int8": variant.metrics["int8_map"]["map50_95"]}
        measured = measure(choice.fp32_onnx, variant.path("int8"), variant_maps, data_yaml, gate,
                           out_dir / f"mixed_{len(kept)}")
        passed = all(row[3] for row in check(gate, measured))
        made[tuple(kept)] = variant
        print(f"    mixed precision: {len(kept)} conv(s) in float -> mAP50-95 {variant_maps['int8']}, "
              f"gate {'holds' if passed else 'fails'}", flush=True)
        return passed, {"name": variant.name, "map50_95": variant_maps["int8"], "onnx": str(variant.path("int8"))}

    kept, trials = keep_float([r["conv"] for r in result["sensitivity"]], judge, counts)
    refusal = {"candidate": choice.name, "failed": quantization_failures(result["checks"]),
               "tried": len(trials[-1].float_convs) if trials else 0,
               "trials": [{"float_convs": t.float_convs, "passed": t.accepted, **t.detail} for t in trials]}
    if kept:
        refusal.update(variant=made[tuple(kept)].name, float_convs=kept,
                       variant_record=relative_to(artifacts, artifacts / "search" / made[tuple(kept)].name /
                                                  "candidate.json"))
    return refusal


def shadow_reference(reference_onnx: Path, reference_weights: Path, image_size: tuple[int, int], out_dir: Path) -> Path:
    """The reference the served shadow runs on the served model's own tensor: its ONNX, or, for a
    model served at a smaller input (input size is a search dimension), the reference's weights
    exported at that size. Live agreement then measures compression at the served size; what the
    smaller input costs against the reference at its own size is the gate's mAP check."""
    from compress.export import export_raw_onnx

    if tuple(read_info(reference_onnx).image_size) == tuple(image_size):
        return reference_onnx
    meta = read_info(reference_onnx).metadata
    provenance = {key: meta[key] for key in ("toolkit_stage", "source_sha256", "baseline_sha256") if key in meta}
    return export_raw_onnx(reference_weights, out_dir / f"shadow_reference_{image_size[0]}px.onnx", image_size[0],
                           {**provenance, "shadow_of": str(reference_onnx.name)})


def run_gate(artifacts: Path, gate: Gate, allow_mixed_precision: bool = True,
             counts: tuple[int, ...] = MIXED_PRECISION_COUNTS) -> dict:
    """Gate the report's choice; on a quantization failure (and `allow_mixed_precision`) refuse
    it, make its float-kept variant, measure the report again and gate its new choice, up to
    MAX_ROUNDS times. Records the passed model in served.json; returns the last judgement."""
    from compress.pipeline import remeasure_report

    artifacts = Path(artifacts)
    manifest = Manifest(artifacts)
    out_dir = artifacts / "parity"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    GatedModel.clear(artifacts)  # whatever was gated before is not what is measured now
    data_yaml = manifest.output("dataset", "data_yaml")
    reference = SearchRecord.load(manifest).reference
    reference_key = reference.row_key
    thresholds = json.loads(json.dumps(asdict(gate)))
    earlier = GateVerdicts.load(artifacts)
    if earlier.gate and earlier.gate != thresholds:  # refused under other thresholds: the report chooses afresh
        GateVerdicts.path(artifacts).unlink()
        remeasure_report(artifacts, Report.load(artifacts).data)
    refused: list[dict] = []
    for round_number in range(MAX_ROUNDS + 1):  # at most MAX_ROUNDS refusals; the last choice is judged too
        report = Report.load(artifacts)
        choice = report.served
        resolved = gate.for_choice(choice)
        plan, trt_onnx = _plan_for(manifest, choice.onnx)
        result = _judge(choice, report_maps(report, reference_key), resolved, data_yaml, out_dir, plan)
        result.update(refused=refused, reference=reference.as_dict(), rounds=round_number + 1)
        failures = quantization_failures(result["checks"])
        if result["passed"]:
            # what the served shadow compares live frames with, and the values it is held against
            reference_row = {row["key"]: row for row in report.data["rows"]}[reference_key]
            reference_onnx = shadow_reference(artifacts / reference_row["onnx"], artifacts / reference_row["weights"],
                                              choice.image_size, out_dir)
            result["shadow_baseline"] = shadow_baseline(reference_onnx, choice.onnx, data_yaml, gate.detection_conf)
            result["shadow_baseline"]["reference"] = reference_key
            GatedModel.record(artifacts, choice.name, choice.onnx, trt_onnx, mixed_precision=bool(choice.float_convs),
                              shadow={"reference_onnx": reference_onnx, **result["shadow_baseline"]}, gate=thresholds)
            break
        if not failures:
            # Float layers can only win back what quantization lost: a pruned model that trails the
            # reference needs more training or less pruning instead.
            result["advice"] = ("what fails is the model itself, not its quantization (float layers cannot help): "
                                "a larger budget (MAX_MAP_DROP=), longer distillation (DISTILL_EPOCHS=) or a lower "
                                "--detection-conf if the model is meant to run at a lower threshold")
            break
        if not (allow_mixed_precision and choice.precision == "int8") or round_number == MAX_ROUNDS:
            break
        refusal = _mixed_precision(choice, result, report_maps(report, reference_key), resolved, data_yaml, out_dir,
                                   counts)
        refused.append(refusal)
        verdicts = GateVerdicts.load(artifacts, gate=thresholds)
        verdicts.refused[choice.name] = {"sha256": file_hash(choice.onnx), "failed": refusal["failed"]}
        if refusal.get("variant"):
            verdicts.variants[refusal["variant"]] = refusal["variant_record"]
        verdicts.save(artifacts)
        print(f"    gate: refused {choice.name}; measuring the report again", flush=True)
        remeasure_report(artifacts, report.data)
    (out_dir / "parity.json").write_text(json.dumps(result, indent=2, default=str))
    (out_dir / "parity.md").write_text(to_markdown(result))
    return result
