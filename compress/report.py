"""The stage-by-stage report: one row per stage with size, cost, speed and accuracy.

Latencies of all stages come from one side-by-side run (compress.benchmark); mAP of every
ONNX comes from the same evaluator the served ensemble uses (compress.evaluate). Speed and
size are checked against the FP32 baseline; accuracy against the equal-budget baseline (the
unpruned model fine-tuned for as many extra epochs as distillation got), so that extra
training is not counted as a compression gain.
"""

from __future__ import annotations

import json
from pathlib import Path

from compress.benchmark import measure_in_subprocess
from compress.evaluate import evaluate_onnx
from tools.env import cpu_threads

TARGETS = {"speedup_bs1": 2.0, "speedup_bs8": 2.5, "size_ratio": 0.30, "macs_reduction": 2.5,
           "map_drop_points": 1.0}
# (stage, manifest output) -> label; the weights each row's params/MACs come from.
ROWS = {
    ("export", "onnx"): ("baseline FP32", "baseline"),
    ("finetune", "onnx"): ("baseline FP32, +distill epochs (equal budget)", "finetune"),
    ("prune", "onnx"): ("pruned FP32", "prune"),
    ("distill", "onnx"): ("pruned+distilled FP32", "distill"),
    ("quantize", "onnx"): ("pruned+distilled INT8 (served)", "distill"),
    ("quantize", "other_stem_onnx"): ("pruned+distilled INT8, other stem choice (not served)", "distill"),
}


def _torch_numbers(weights: Path, imgsz: int) -> dict:
    from compress import yolo

    return yolo.describe(yolo.load(weights), imgsz)


def collect(ctx) -> dict:
    manifest = ctx.manifest
    imgsz = ctx.imgsz()
    rows_wanted = {key: value for key, value in ROWS.items() if key[1] in manifest.get(key[0]).outputs}
    onnx_paths = {f"{stage}:{output}": manifest.output(stage, output) for stage, output in rows_wanted}
    threads = min(2, cpu_threads())
    print(f"    measuring latency of {len(onnx_paths)} models side by side ({threads} threads)", flush=True)
    latency = measure_in_subprocess(onnx_paths, (imgsz, imgsz), threads=threads)
    rows = []
    for (stage, output), (label, weights_stage) in rows_wanted.items():
        key, path = f"{stage}:{output}", manifest.output(stage, output)
        numbers = _torch_numbers(manifest.output(weights_stage, "weights"), imgsz)
        rows.append({
            "stage": stage, "output": output, "model": label, "onnx": str(path.relative_to(ctx.artifacts)),
            "params": numbers["params"], "gmacs": numbers["gmacs"], "file_mb": round(path.stat().st_size / 1e6, 3),
            **latency[key], **evaluate_onnx(path, ctx.data_yaml(), threads=threads),
        })
    by_key = {(r["stage"], r["output"]): r for r in rows}
    base, served = by_key[("export", "onnx")], by_key[("quantize", "onnx")]
    # The equal-budget baseline, unless the extra epochs made the unpruned model worse (seen on
    # 37 images): then the original is the stronger unpruned model the budget could buy.
    fair = max(by_key[("finetune", "onnx")], base, key=lambda row: row["map50_95"])
    measured = {
        "speedup_bs1": round(base["bs1_ms"] / served["bs1_ms"], 3),
        "speedup_bs8": round(base["bs8_ms"] / served["bs8_ms"], 3),
        "size_ratio": round(served["file_mb"] / base["file_mb"], 3),
        "macs_reduction": round(base["gmacs"] / served["gmacs"], 3),
        "map_drop_points": round((fair["map50_95"] - served["map50_95"]) * 100, 2),
    }
    met = {key: (measured[key] <= TARGETS[key]) if key in ("size_ratio", "map_drop_points")
           else (measured[key] >= TARGETS[key]) for key in TARGETS}
    quant = manifest.get("quantize").metrics
    plan = manifest.get("plan")
    return {
        "image_size": imgsz, "threads": threads, "rows": rows,
        "targets": {"wanted": TARGETS, "measured": measured, "met": met, "all_met": all(met.values()),
                    "accuracy_reference": fair["model"],
                    "map_drop_vs_unfair_baseline_points": round((base["map50_95"] - served["map50_95"]) * 100, 2)},
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
        "| stage | params | GMACs | file MB | bs1 ms | bs8 ms | mAP50 | mAP50-95 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        lines.append(f"| {r['model']} | {r['params']:,} | {r['gmacs']:.3f} | {r['file_mb']:.2f} | {r['bs1_ms']:.2f} | "
                     f"{r['bs8_ms']:.2f} | {r['map50']:.4f} | {r['map50_95']:.4f} |")
    t = report["targets"]
    names = {"speedup_bs1": "speed-up at batch 1 vs baseline FP32 (x, >=)",
             "speedup_bs8": "speed-up at batch 8 vs baseline FP32 (x, >=)",
             "size_ratio": "file size vs baseline FP32 (<=)", "macs_reduction": "fewer MACs than baseline (x, >=)",
             "map_drop_points": "mAP50-95 drop vs the equal-budget baseline, points (<=; negative = gain)"}
    lines += ["", "## Targets (served INT8)", "", "| target | wanted | measured | met |", "|---|---:|---:|---|"]
    for key, label in names.items():
        lines.append(f"| {label} | {t['wanted'][key]} | {t['measured'][key]} | {'yes' if t['met'][key] else 'NO'} |")
    q, p = report["quantization"], report["pruning"]
    lines += [
        "", f"Accuracy reference: {t['accuracy_reference']}. "
        + (f"Measured against the baseline without the extra epochs, the drop would read "
           f"{t['map_drop_vs_unfair_baseline_points']} points instead of {t['measured']['map_drop_points']}: that "
           "difference is training budget, not compression."
           if t["map_drop_vs_unfair_baseline_points"] != t["measured"]["map_drop_points"] else
           "The extra epochs did not improve the unpruned model, so the original baseline is the reference."),
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
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, title in ((axes[0], "bs1_ms", "batch 1"), (axes[1], "bs8_ms", "batch 8")):
        for row, marker in zip(report["rows"], "osD^v"):
            ax.scatter(row[key], row["map50_95"], s=70, marker=marker, label=row["model"])
        ax.legend(fontsize=8, loc="lower right")
        ax.set_xlabel(f"ONNX Runtime CPU latency, {title} (ms, median)")
        ax.set_ylabel("mAP50-95 (val)")
        ax.set_title(f"accuracy vs latency, {title}")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(ctx, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    report = collect(ctx)
    paths = {"json": out / "report.json", "markdown": out / "report.md", "plot": out / "accuracy_vs_latency.png"}
    paths["json"].write_text(json.dumps(report, indent=2))
    paths["markdown"].write_text(to_markdown(report))
    plot(report, paths["plot"])
    print(to_markdown(report), flush=True)
    return paths
