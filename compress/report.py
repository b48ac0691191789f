"""The stage-by-stage report: one row per stage with size, cost, speed and accuracy.

Latencies of all stages come from one side-by-side run (compress.benchmark); mAP of every
ONNX comes from the same evaluator the served ensemble uses (compress.evaluate). Targets are
checked against the FP32 baseline and written as met or missed with the measured margin.
"""

from __future__ import annotations

import json
from pathlib import Path

from compress.benchmark import measure_in_subprocess
from compress.evaluate import evaluate_onnx
from tools.env import cpu_threads

TARGETS = {"speedup_bs1": 2.0, "speedup_bs8": 2.5, "size_ratio": 0.30, "map_drop_points": 1.5}
LABELS = {"export": "baseline FP32", "prune": "pruned FP32", "distill": "pruned+distilled FP32",
          "quantize": "pruned+distilled INT8 (served)"}


def _torch_numbers(weights: Path, imgsz: int) -> dict:
    from compress import yolo

    return yolo.describe(yolo.load(weights), imgsz)


def collect(ctx) -> dict:
    manifest = ctx.manifest
    imgsz = ctx.imgsz()
    onnx_paths = {stage: manifest.output(stage, "onnx") for stage in LABELS}
    weights_for = {"export": "baseline", "prune": "prune", "distill": "distill", "quantize": "distill"}
    threads = min(2, cpu_threads())
    print(f"    measuring latency of {len(onnx_paths)} models side by side ({threads} threads)", flush=True)
    latency = measure_in_subprocess(onnx_paths, (imgsz, imgsz), threads=threads)
    rows = []
    for stage, path in onnx_paths.items():
        numbers = _torch_numbers(manifest.output(weights_for[stage], "weights"), imgsz)
        rows.append({
            "stage": stage, "model": LABELS[stage], "onnx": str(path.relative_to(ctx.artifacts)),
            "params": numbers["params"], "gmacs": numbers["gmacs"], "file_mb": round(path.stat().st_size / 1e6, 3),
            **latency[stage], **evaluate_onnx(path, ctx.data_yaml(), threads=threads),
        })
    base, served = rows[0], rows[-1]
    measured = {
        "speedup_bs1": round(base["bs1_ms"] / served["bs1_ms"], 3),
        "speedup_bs8": round(base["bs8_ms"] / served["bs8_ms"], 3),
        "size_ratio": round(served["file_mb"] / base["file_mb"], 3),
        "map_drop_points": round((base["map50_95"] - served["map50_95"]) * 100, 2),
    }
    met = {
        "speedup_bs1": measured["speedup_bs1"] >= TARGETS["speedup_bs1"],
        "speedup_bs8": measured["speedup_bs8"] >= TARGETS["speedup_bs8"],
        "size_ratio": measured["size_ratio"] <= TARGETS["size_ratio"],
        "map_drop_points": measured["map_drop_points"] <= TARGETS["map_drop_points"],
    }
    quant = manifest.get("quantize").metrics
    plan = manifest.get("plan")
    return {
        "image_size": imgsz, "threads": threads, "rows": rows,
        "targets": {"wanted": TARGETS, "measured": measured, "met": met, "all_met": all(met.values())},
        "baseline_ultralytics_val": {k: manifest.get("baseline").metrics.get(k) for k in ("map50", "map50_95")},
        "quantization": {k: quant.get(k) for k in ("calibration", "calibration_images", "activation", "float_convs")},
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
    names = {"speedup_bs1": "speed-up at batch 1 (x, >=)", "speedup_bs8": "speed-up at batch 8 (x, >=)",
             "size_ratio": "file size vs baseline (<=)", "map_drop_points": "mAP50-95 drop in points (<=; negative = gain)"}
    lines += ["", "## Targets (served INT8 vs FP32 baseline)", "", "| target | wanted | measured | met |",
              "|---|---:|---:|---|"]
    for key, label in names.items():
        lines.append(f"| {label} | {t['wanted'][key]} | {t['measured'][key]} | {'yes' if t['met'][key] else 'NO'} |")
    q, p = report["quantization"], report["pruning"]
    lines += [
        "", f"Pruning: channel ratio {p.get('ratio')}, {p.get('macs_reduction')}x fewer MACs, "
        f"{p.get('params_kept')} of the parameters kept.",
        f"INT8: {q['calibration']} calibration on {q['calibration_images']} training images, "
        f"{q['activation']} activations, per-channel int8 weights; kept in float: {', '.join(q['float_convs'] or [])}.",
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
