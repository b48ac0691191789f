"""Where the time goes: ONNX Runtime's own per-node profiler on the FP32 and INT8 graphs.

Runs each model at batch 1 and 8 in a fresh process (like compress.benchmark), sums the kernel
time of every node by operator type, and groups the types into what a reader decides on
(float conv, quantized conv, Q/DQ, SiLU's Sigmoid+Mul, Concat, Split, Resize, ...).

    python -m compress.profile --imgsz 256 fp32=artifacts/export/baseline.onnx int8=artifacts/search/relu_1x/int8.onnx
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from compress.benchmark import BATCH_SIZES, WARMUP_RUNS

PROFILED_RUNS = {1: 30, 8: 8}
# Operator type -> the group a decision is made on. ORT's optimised graph names what really ran:
# FP32 Conv+activation fuse into FusedConv; Q/DQ around a Conv become QLinearConv.
GROUPS = {
    "Conv": "conv (float)", "FusedConv": "conv (float)",
    "QLinearConv": "conv (int8)", "ConvInteger": "conv (int8)", "MatMulInteger": "conv (int8)",
    "QuantizeLinear": "quantize / dequantize", "DequantizeLinear": "quantize / dequantize",
    "DynamicQuantizeLinear": "quantize / dequantize",
    "Sigmoid": "SiLU (Sigmoid, Mul)", "Mul": "SiLU (Sigmoid, Mul)", "QuickGelu": "SiLU (Sigmoid, Mul)",
    "QLinearSigmoid": "SiLU (Sigmoid, Mul)", "QLinearMul": "SiLU (Sigmoid, Mul)",
    "Concat": "Concat", "QLinearConcat": "Concat",
    "Split": "Split", "Slice": "Split",
    "Resize": "Resize", "Upsample": "Resize",
    "MaxPool": "MaxPool", "QLinearMaxPool": "MaxPool", "NhwcMaxPool": "MaxPool",
    "ReorderInput": "layout reorder", "ReorderOutput": "layout reorder",
    "Add": "Add", "QLinearAdd": "Add", "Sum": "Add",
    "Relu": "activation (other)", "Clip": "activation (other)",
    "Reshape": "Reshape / Transpose", "Transpose": "Reshape / Transpose", "Flatten": "Reshape / Transpose",
}


def profile_model(path: Path, image_size: tuple[int, int], batch: int, threads: int = 2) -> dict[str, float]:
    """Mean kernel time per run (ms) by operator type, as ONNX Runtime's profiler records it."""
    from compress.onnx_session import create_session

    with tempfile.TemporaryDirectory() as folder:
        session = create_session(path, threads, profile_prefix=str(Path(folder) / "profile"))
        from compress.benchmark import input_size

        feed = {"images": np.random.default_rng(0).random((batch, 3, *input_size(path, image_size)), dtype=np.float32)}
        for _ in range(WARMUP_RUNS + PROFILED_RUNS[batch]):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    # Warm-up runs are profiled too: count only node events after the last warm-up run ended.
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    cutoff = runs[WARMUP_RUNS - 1]["ts"] + runs[WARMUP_RUNS - 1]["dur"]
    events = [e for e in events if e["ts"] >= cutoff]
    per_op: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"] / 1e3
    return {op: round(ms / PROFILED_RUNS[batch], 4) for op, ms in sorted(per_op.items(), key=lambda kv: -kv[1])}


def grouped(per_op: dict[str, float]) -> dict[str, float]:
    groups: dict[str, float] = defaultdict(float)
    for op, ms in per_op.items():
        groups[GROUPS.get(op, "other")] += ms
    return {group: round(ms, 4) for group, ms in sorted(groups.items(), key=lambda kv: -kv[1])}


def profile_all(models: dict[str, Path], image_size: tuple[int, int], threads: int = 2) -> dict:
    result = {}
    for name, path in models.items():
        for batch in BATCH_SIZES:
            per_op = profile_model(path, image_size, batch, threads)
            total = sum(per_op.values())
            result[f"{name}@bs{batch}"] = {"total_ms": round(total, 3), "by_op": per_op, "by_group": grouped(per_op),
                                           "share": {g: round(ms / total, 4) for g, ms in grouped(per_op).items()}}
    return result


def profile_in_subprocess(models: dict[str, Path], image_size: tuple[int, int], threads: int = 2) -> dict:
    command = [sys.executable, "-m", "compress.profile", "--imgsz", str(image_size[0]), "--threads", str(threads),
               *(f"{name}={path}" for name, path in models.items())]
    return json.loads(subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True).stdout)


def to_markdown(profile: dict) -> str:
    groups = sorted({g for entry in profile.values() for g in entry["by_group"]},
                    key=lambda g: -max(e["share"].get(g, 0) for e in profile.values()))
    lines = ["| op group | " + " | ".join(profile) + " |", "|---|" + "---:|" * len(profile)]
    for group in groups:
        cells = [f"{e['by_group'].get(group, 0):.2f} ms ({e['share'].get(group, 0):.0%})" for e in profile.values()]
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    lines.append("| **kernel total** | " + " | ".join(f"**{e['total_ms']:.2f} ms**" for e in profile.values()) + " |")
    return "\n".join(lines) + "\n"


def plot(profile: dict, path: Path) -> None:
    from compress.plotting import saved_figure

    groups = sorted({g for entry in profile.values() for g in entry["by_group"]},
                    key=lambda g: -sum(e["share"].get(g, 0) for e in profile.values()))
    with saved_figure(path, columns=2, size=(15, 4.5)) as (_, axes):
        for ax, batch in zip(axes, BATCH_SIZES):
            names = [n for n in profile if n.endswith(f"@bs{batch}")]
            left = np.zeros(len(names))
            for group in groups:
                widths = np.array([profile[n]["by_group"].get(group, 0.0) for n in names])
                ax.barh([n.rsplit("@", 1)[0] for n in names], widths, left=left, label=group)
                left += widths
            ax.set_xlabel(f"kernel time per run at batch {batch} (ms, ONNX Runtime profiler)")
            ax.set_title(f"where the time goes, batch {batch}")
            ax.grid(axis="x", alpha=0.3)
        axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside, not over, the bars


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="name=path.onnx")
    parser.add_argument("--imgsz", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    models = {k: Path(v) for k, v in (item.split("=", 1) for item in args.models)}
    json.dump(profile_all(models, (args.imgsz, args.imgsz), args.threads), sys.stdout)


if __name__ == "__main__":
    main()
