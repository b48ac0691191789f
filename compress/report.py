"""The stage-by-stage report: one row per stage with size, cost, speed and accuracy.

Latencies of all stages come from one side-by-side run (compress.benchmark); mAP of every
ONNX comes from the same evaluator the served ensemble uses (compress.evaluate). Speed and
size are checked against the FP32 baseline; accuracy against the equal-budget baseline (the
unpruned model fine-tuned for as many extra epochs as distillation got), so that extra
training is not counted as a compression gain.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

from compress.benchmark import BATCH_SIZES, ROUNDS, competing_load, measure_in_subprocess, speedup, verdict
from compress.env import cpu_threads
from compress.evaluate import evaluate_onnx
from compress.plotting import saved_figure
from compress.profile import plot as profile_plot
from compress.profile import profile_in_subprocess
from compress.profile import to_markdown as profile_markdown

# Issue #11's goal for the served model: >= 3x / 4x faster than the FP32 baseline at batch 1 / 8
# within 1 point of mAP50-95 of the equal-budget baseline (the first targets were 2x / 2.5x).
TARGETS = {"speedup_bs1": 3.0, "speedup_bs8": 4.0, "size_ratio": 0.30, "macs_reduction": 2.5,
           "map_drop_points": 1.0}
# (stage, manifest output) -> label, (stage, output) of the weights its params/MACs come from.
ROWS = {
    ("export", "onnx"): ("baseline FP32", ("baseline", "weights")),
    ("finetune", "onnx"): ("baseline FP32, +distill epochs (equal budget)", ("finetune", "weights")),
    ("prune", "onnx"): ("pruned FP32", ("prune", "weights")),
    ("distill", "onnx"): ("pruned+distilled FP32", ("distill", "weights")),
    ("quantize", "onnx"): ("pruned+distilled INT8", ("distill", "weights")),
    ("quantize", "other_stem_onnx"): ("pruned+distilled INT8, other stem choice", ("distill", "weights")),
}
# Rows that can be served: INT8 models with the FP32 twin the parity gate compares them with.
SERVABLE = {("quantize", "onnx"): ("distill", "onnx")}
# The parity gate's default allowance against the fair reference (points of mAP50-95): it stops a
# compression that went wrong. Which row is served is the profile's `max_map_drop` (see collect).
GATE_MAP_ALLOWANCE_POINTS = 8.0
# The extra epochs may add this much to the unpruned baseline before the report calls it
# under-trained: past it the teacher was still learning and the drop measures training budget.
CONVERGED_BASELINE_POINTS = 2.0


def rows_of(manifest) -> tuple[dict, dict]:
    """The fixed rows present in the manifest, then one FP32 and one INT8 row per variant; and the
    servable rows with their FP32 twins."""
    rows = {key: value for key, value in ROWS.items() if key[1] in manifest.get(key[0]).outputs}
    servable = dict(SERVABLE)
    variants = manifest.get("variants")
    for name, info in (variants.metrics if variants else {}).items():
        what = f"{ {'relu': 'ReLU', 'silu': 'SiLU'}[info['activation']]} student, {info['target']:g}x MACs target"
        rows[("variants", f"{name}_fp32")] = (f"{what}, FP32", ("variants", f"{name}_weights"))
        rows[("variants", f"{name}_int8")] = (f"{what}, INT8", ("variants", f"{name}_weights"))
        servable[("variants", f"{name}_int8")] = ("variants", f"{name}_fp32")
    return rows, servable


def pareto_front(rows: list[dict], latency_key: str = "bs1_ms") -> list[dict]:
    """Rows no other row beats on both latency (lower) and mAP50-95 (higher)."""
    return [r for r in rows if not any(o is not r and o[latency_key] <= r[latency_key] and o["map50_95"] >= r["map50_95"]
                                       and (o[latency_key] < r[latency_key] or o["map50_95"] > r["map50_95"])
                                       for o in rows)]


def choose_served(rows: list[dict], servable: list[dict], fair: dict, max_map_drop: float) -> tuple[dict, str]:
    """The served default and the rule that picked it: the fastest servable (INT8) row on the
    accuracy/latency front within `max_map_drop` points of the fair reference, else the most
    accurate servable row."""
    front = pareto_front(rows)
    allowed = [r for r in servable if r in front and (fair["map50_95"] - r["map50_95"]) * 100 <= max_map_drop]
    if allowed:
        return (min(allowed, key=lambda r: r["bs1_ms"]),
                f"fastest servable INT8 on the accuracy/latency front within {max_map_drop:g} points of the fair reference")
    return (max(servable, key=lambda r: r["map50_95"]),
            f"no servable INT8 row is within {max_map_drop:g} points of the fair reference: the most accurate one; "
            f"`MAX_MAP_DROP=<points>` trades accuracy for speed")


def _torch_numbers(weights: Path, imgsz: int) -> dict:
    from compress import yolo

    return yolo.describe(yolo.load(weights), imgsz)


def collect(ctx) -> dict:
    manifest = ctx.manifest
    imgsz = ctx.imgsz()
    rows_wanted, servable_twins = rows_of(manifest)
    onnx_paths = {f"{stage}:{output}": manifest.output(stage, output) for stage, output in rows_wanted}
    threads = min(2, cpu_threads())
    print(f"    measuring latency of {len(onnx_paths)} models side by side ({threads} threads)", flush=True)
    with competing_load() as machine:
        latency = measure_in_subprocess(onnx_paths, (imgsz, imgsz), threads=threads)
    rows = []
    spread_keys = {f"bs{b}" for b in BATCH_SIZES} | {f"bs{b}_rounds" for b in BATCH_SIZES}
    for (stage, output), (label, weights) in rows_wanted.items():
        key, path = f"{stage}:{output}", manifest.output(stage, output)
        numbers = _torch_numbers(manifest.output(*weights), imgsz)
        rows.append({
            "stage": stage, "output": output, "model": label, "onnx": str(path.relative_to(ctx.artifacts)),
            "params": numbers["params"], "gmacs": numbers["gmacs"], "file_mb": round(path.stat().st_size / 1e6, 3),
            **{k: v for k, v in latency[key].items() if k not in spread_keys},
            **{f"bs{b}_median_ms": latency[key][f"bs{b}"]["median"] for b in BATCH_SIZES},
            **{f"bs{b}_iqr_ms": [latency[key][f"bs{b}"]["p25"], latency[key][f"bs{b}"]["p75"]] for b in BATCH_SIZES},
            **evaluate_onnx(path, ctx.data_yaml(), threads=threads),
        })
    by_key = {(r["stage"], r["output"]): r for r in rows}
    base = by_key[("export", "onnx")]
    # The equal-budget baseline, unless the extra epochs made the unpruned model worse (seen on
    # 37 images): then the original is the stronger unpruned model the budget could buy.
    fair = max(by_key[("finetune", "onnx")], base, key=lambda row: row["map50_95"])
    served, rule = choose_served(rows, [by_key[key] for key in servable_twins if key in by_key], fair,
                                 ctx.profile.max_map_drop)
    front = pareto_front(rows)
    for row in rows:
        row["pareto"] = row in front
        row["candidate"] = row is served
    served_key = f"{served['stage']}:{served['output']}"
    ratios = {f"speedup_bs{b}": speedup(latency, "export:onnx", served_key, b) for b in BATCH_SIZES}
    measured = {
        "speedup_bs1": ratios["speedup_bs1"]["estimate"],
        "speedup_bs8": ratios["speedup_bs8"]["estimate"],
        "size_ratio": round(served["file_mb"] / base["file_mb"], 3),
        "macs_reduction": round(base["gmacs"] / served["gmacs"], 3),
        "map_drop_points": round((fair["map50_95"] - served["map50_95"]) * 100, 2),
    }
    met = {key: (measured[key] <= TARGETS[key]) if key in ("size_ratio", "map_drop_points")
           else (measured[key] >= TARGETS[key]) for key in TARGETS}
    for key, ratio in ratios.items():  # speed is met only when it holds beyond the round-to-round noise
        met[key] = verdict(ratio, TARGETS[key]) == "met"
    quant = manifest.get("quantize").metrics
    plan = manifest.get("plan")
    return {
        "image_size": imgsz, "threads": threads, "rows": rows, "machine_during_latency": machine,
        "candidate": {"stage": served["stage"], "onnx": served["onnx"], "model": served["model"],
                      "fp32_onnx": str(manifest.output(*servable_twins[(served["stage"], served["output"])])
                                       .relative_to(ctx.artifacts)),
                      "rule": rule},
        "targets": {"wanted": TARGETS, "measured": measured, "met": met, "all_met": all(met.values()),
                    "speedup_spread": {key: {**ratio, "verdict": verdict(ratio, TARGETS[key])}
                                       for key, ratio in ratios.items()},
                    "speedup_rounds": {f"bs{b}": ROUNDS[b] for b in BATCH_SIZES},
                    "accuracy_reference": fair["model"],
                    "map_drop_vs_unfair_baseline_points": round((base["map50_95"] - served["map50_95"]) * 100, 2),
                    "baseline_gain_from_extra_epochs_points":
                        round((by_key[("finetune", "onnx")]["map50_95"] - base["map50_95"]) * 100, 2)},
        "baseline_ultralytics_val": {k: manifest.get("baseline").metrics.get(k) for k in ("map50", "map50_95")},
        "quantization": {k: quant.get(k) for k in ("calibration", "calibration_images", "calibration_batch",
                                                   "activation", "float_convs", "stem_float", "opset")},
        "pruning": manifest.get("prune").metrics,
        "plan": plan.metrics if plan else {"skipped": "plan stage not run"},
    }


def to_markdown(report: dict) -> str:
    lines = [
        f"# Compression report ({report['image_size']}x{report['image_size']}, ONNX Runtime CPU, "
        f"{report['threads']} threads, latencies measured side by side in one run)", "",
        "Latency: the fastest decile of the interleaved rounds (the machine undisturbed by its neighbours), the "
        "median in brackets; speed-ups are ratios of fastest deciles with a bootstrap interval (p10-p90).", "",
        "| stage | params | GMACs | file MB | bs1 ms (median) | bs8 ms (median) | mAP50 | mAP50-95 | front |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["rows"]:
        mark = "**serving candidate**" if r.get("candidate") else ("yes" if r.get("pareto") else "")
        lines.append(f"| {r['model']} | {r['params']:,} | {r['gmacs']:.3f} | {r['file_mb']:.2f} | "
                     f"{r['bs1_ms']:.2f} ({r['bs1_median_ms']:.2f}) | {r['bs8_ms']:.2f} ({r['bs8_median_ms']:.2f}) | "
                     f"{r['map50']:.4f} | {r['map50_95']:.4f} | {mark} |")
    if report.get("candidate"):
        lines += ["", f"Serving candidate: **{report['candidate']['model']}** ({report['candidate']['rule']}); "
                      "`make parity` gates it against its FP32 twin."]
    t = report["targets"]
    names = {"speedup_bs1": "speed-up at batch 1 vs baseline FP32 (x, >=)",
             "speedup_bs8": "speed-up at batch 8 vs baseline FP32 (x, >=)",
             "size_ratio": "file size vs baseline FP32 (<=)", "macs_reduction": "fewer MACs than baseline (x, >=)",
             "map_drop_points": "mAP50-95 drop vs the equal-budget baseline, points (<=; negative = gain)"}
    lines += ["", "## Targets (serving candidate)", "", "| target | wanted | measured | met |", "|---|---:|---:|---|"]
    for key, label in names.items():
        measured = t["measured"][key]
        if key in t.get("speedup_spread", {}):
            ratio = t["speedup_spread"][key]
            measured = (f"{ratio['estimate']} (interval {ratio['p10']}-{ratio['p90']}: {ratio['verdict']}; "
                        f"per round, median {ratio['per_round']['median']})")
        lines.append(f"| {label} | {t['wanted'][key]} | {measured} | {'yes' if t['met'][key] else 'NO'} |")
    machine = report.get("machine_during_latency") or {}
    if machine:
        lines += ["", f"During the latency rounds ({machine['seconds']} s) other processes kept "
                      f"{machine['other_processes_cores']} cores busy and the hypervisor took {machine['steal_cores']}."
                  + (" **Busy machine**: the speed-ups are not comparable with a quiet run; measure again with "
                     "nothing else running (`make bench`)." if machine["busy"] else "")]
    if t.get("previous_run"):
        agreement = ", ".join(f"{k} {v:+.1%}" for k, v in t["previous_run"]["change"].items())
        lines += ["", f"Against the previous `make bench` ({t['previous_run']['when']}): {agreement} "
                      f"({'all within' if t['previous_run']['within_10pct'] else 'NOT all within'} 10%"
                      f"{'; one of the two ran on a busy machine' if t['previous_run'].get('busy_machine') else ''})."]
    q, p = report["quantization"], report["pruning"]
    lines += [
        "", f"Accuracy reference: {t['accuracy_reference']}. "
        + (f"Measured against the baseline without the extra epochs, the drop would read "
           f"{t['map_drop_vs_unfair_baseline_points']} points instead of {t['measured']['map_drop_points']}: that "
           "difference is training budget, not compression."
           if t["map_drop_vs_unfair_baseline_points"] != t["measured"]["map_drop_points"] else
           "The extra epochs did not improve the unpruned model, so the original baseline is the reference."),
        *([] if t["baseline_gain_from_extra_epochs_points"] <= CONVERGED_BASELINE_POINTS else [
            "", f"**Under-trained baseline**: the extra epochs added {t['baseline_gain_from_extra_epochs_points']} "
            f"points to the unpruned model (more than {CONVERGED_BASELINE_POINTS}), so the teacher was still learning "
            "and the accuracy gap measures training budget as much as compression: train the baseline longer "
            "(`EPOCHS=`) or bring converged weights (`WEIGHTS=`)."]),
        "", f"Pruning: channel ratio {p.get('ratio')}, {p.get('macs_reduction')}x fewer MACs, "
        f"{p.get('params_kept')} of the parameters kept.",
        f"INT8: {q['calibration']} calibration on {q['calibration_images']} training images "
        f"(batches of {q.get('calibration_batch')}), {q['activation']} activations, per-channel int8 weights, "
        f"stem conv {'float' if q.get('stem_float') else 'quantized'}; kept in float: "
        f"{', '.join(q['float_convs'] or [])}.",
        f"mAP here is measured with the served pre/post-processing (conf 0.001, NMS IoU 0.7); Ultralytics' validator "
        f"gives the baseline mAP50-95 {report['baseline_ultralytics_val']['map50_95']}.",
        f"TensorRT plans: {report['plan'].get('skipped') or report['plan']}",
    ]
    if report.get("op_profile"):
        lines += ["", "## Where the time goes (ONNX Runtime profiler, kernel time per run)", "",
                  profile_markdown(report["op_profile"]).rstrip("\n"), "", "Plot: op_profile.png."]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    # a row far below the others (the pruned model before distillation scores ~0) would squash
    # the differences that matter into one line: it is named in the legend instead of drawn
    best = max(row["map50_95"] for row in report["rows"])
    shown = [row for row in report["rows"] if row["map50_95"] >= 0.5 * best]
    hidden = [row for row in report["rows"] if row not in shown]
    with saved_figure(path, columns=2, size=(15, 5)) as (_, axes):
        for ax, key, title in ((axes[0], "bs1_ms", "batch 1"), (axes[1], "bs8_ms", "batch 8")):
            for row, marker in zip(shown, itertools.cycle("osD^vP*X")):
                high = max(row[f"{key[:3]}_iqr_ms"][1], row[key])
                label = row["model"] + (" (served)" if row.get("candidate") else "")
                ax.errorbar(row[key], row["map50_95"], xerr=[[0.0], [high - row[key]]], fmt=marker,
                            markersize=8, capsize=3, label=label)
            reference = next((r for r in shown if r["model"] == report["targets"]["accuracy_reference"]), None)
            if reference:
                allowed = report["targets"]["wanted"]["map_drop_points"]
                ax.axhline(reference["map50_95"] - allowed / 100, color="gray", linestyle="--", linewidth=1,
                           label=f"{allowed:g} point below the equal-budget baseline (accuracy goal)")
            for row in hidden:
                ax.plot([], [], " ", label=f"{row['model']}: mAP50-95 {row['map50_95']:.3f}, off the chart")
            if ax is axes[1]:  # one legend, beside the plots: inside it would hide the points
                ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
            ax.set_xlabel(f"ms at {title}: fastest decile, bar to the 3rd quartile")
            ax.set_ylabel("mAP50-95 (val)")
            ax.set_title(f"accuracy vs ONNX Runtime CPU latency, {title}")
            ax.grid(alpha=0.3)


def op_profile(ctx, report: dict) -> dict:
    """ONNX Runtime's per-node profile of the baseline, the pruned FP32 graph and every INT8 row."""
    models = {"baseline FP32": ctx.manifest.output("export", "onnx"), "pruned FP32": ctx.manifest.output("distill", "onnx")}
    for row in report["rows"]:
        if row["model"].endswith("INT8"):
            models[row["model"].replace("pruned+distilled ", "SiLU student, ")] = ctx.artifacts / row["onnx"]
    print(f"    profiling {len(models)} models by operator (ONNX Runtime profiler)", flush=True)
    return profile_in_subprocess(models, (ctx.imgsz(), ctx.imgsz()), threads=report["threads"])


def write_report(ctx, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    report = collect(ctx)
    paths = {"json": out / "report.json", "markdown": out / "report.md", "plot": out / "accuracy_vs_latency.png"}
    previous = json.loads(paths["json"].read_text()) if paths["json"].exists() else {}
    if previous.get("candidate", {}).get("onnx") == report["candidate"]["onnx"]:
        # the same model measured again: do the ratios hold from one run to the next?
        before, now = previous["targets"]["measured"], report["targets"]["measured"]
        change = {k: round(now[k] / before[k] - 1, 4) for k in ("speedup_bs1", "speedup_bs8") if before.get(k)}
        report["targets"]["previous_run"] = {"when": previous.get("measured_at", "unknown"), "change": change,
                                             "within_10pct": all(abs(v) <= 0.10 for v in change.values()),
                                             "busy_machine": any((run.get("machine_during_latency") or {}).get("busy")
                                                                 for run in (previous, report))}
    report["measured_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    report["op_profile"] = op_profile(ctx, report)
    paths["op_profile_plot"] = out / "op_profile.png"
    profile_plot(report["op_profile"], paths["op_profile_plot"])
    paths["json"].write_text(json.dumps(report, indent=2))
    paths["markdown"].write_text(to_markdown(report))
    plot(report, paths["plot"])
    print(to_markdown(report), flush=True)
    return paths
