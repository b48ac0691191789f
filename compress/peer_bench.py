"""The served model beside a CPU user's first alternative, in one run (`make bench-peers`).

    python -m compress.peer_bench --artifacts artifacts

The peer is Ultralytics' own `yolo export format=openvino int8=True` of the same FP32 baseline:
NNCF post-training quantization, no pruning, no training, run as Ultralytics runs it (OpenVINO
`LATENCY` hint, OpenVINO's default float precision on this CPU). Its calibration is Ultralytics'
except for the split: the training split, the one the project's INT8 calibrates on (Ultralytics'
default would be the val split the mAP is measured on).

Rows (each in a process of its own, latency interleaved round by round, all at the thread count
of a served detector instance; compress/benchmark.py):
    baseline FP32 on ONNX Runtime          the speed-ups' denominator, as in the report
    served model on ONNX Runtime           what `make repo` serves (the gate's record)
    Ultralytics OpenVINO INT8 (NNCF)       the peer, as Ultralytics runs it, and at f32
    served model's file on OpenVINO f32    is OpenVINO a faster runtime for the project's own file?
    baseline FP32 on OpenVINO f32          ... and for the FP32 model?
mAP50-95 of every row by one evaluator (compress/evaluate.py: the served pre/post-processing,
Ultralytics' matching), plus Ultralytics' own validator on the peer and the baseline checkpoint.
Writes peers.json, peers.md and peers.png into `--out` (default <artifacts>/peers/).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from compress.benchmark import BATCH_SIZES, ROUNDS, competing_load, latency_in_workers, speedup
from compress.env import describe_machine, machine_line, serving_threads, telemetry_off
from compress.errors import InputFileError, ToolkitError, cli_entry
from compress.manifest import Manifest, file_hash
from compress.plotting import saved_figure
from compress.records import GatedModel, Report, read_json, write_json
from compress.progress import stage

BASELINE = "baseline_ort"
SERVED = "served_ort"
PEER = "peer_openvino"
PEER_F32 = "peer_openvino_f32"
SERVED_OPENVINO = "served_openvino_f32"
BASELINE_OPENVINO = "baseline_openvino_f32"
CALIBRATION_SPLIT = "train"
# `yolo export format=openvino quantize=8` (the older spelling: int8=True), calibrated on the train split
EXPORT_ARGS = {"format": "openvino", "quantize": 8, "split": CALIBRATION_SPLIT, "batch": 1, "device": "cpu"}


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("openvino", "nncf", "ultralytics", "onnxruntime")}


def export_peer(weights: Path, data_yaml: Path, imgsz: int, out_dir: Path) -> Path:
    """Ultralytics' OpenVINO INT8 export of `weights` (its .xml); made again only when the weights
    or the tools changed."""
    from compress import yolo

    out_dir.mkdir(parents=True, exist_ok=True)
    record_path = out_dir / "peer_export.json"
    wanted = {"weights_sha256": file_hash(weights), "imgsz": imgsz, "export": EXPORT_ARGS, "versions": _versions()}
    copy = out_dir / "baseline.pt"  # Ultralytics writes the export beside the weights it loads
    export_dir = out_dir / "baseline_int8_openvino_model"
    if record_path.exists() and export_dir.exists():
        record = read_json(record_path, "peer export record", "delete it and run `make bench-peers` again")
        if record.get("wanted") == wanted:
            return next(export_dir.glob("*.xml"))
    shutil.rmtree(export_dir, ignore_errors=True)
    shutil.copy2(weights, copy)
    with stage("peer: Ultralytics OpenVINO INT8 export (NNCF calibration)"), telemetry_off():
        exported = Path(yolo.load(copy).export(**EXPORT_ARGS, data=str(data_yaml), imgsz=imgsz, verbose=False))
    write_json(record_path, {"wanted": wanted, "export": str(exported.name)})
    return next(exported.glob("*.xml"))


def ultralytics_val(model_path: Path, data_yaml: Path, imgsz: int) -> dict:
    """Ultralytics' own validator (mAP50, mAP50-95) on the val split, batch 1 (the peer's IR has a
    static batch of one, as Ultralytics exports it)."""
    from compress import yolo

    return yolo.evaluate(yolo.load(model_path), data_yaml, imgsz, batch=1)


def peer_rows(baseline_onnx: Path, served_onnx: Path, peer_xml: Path) -> dict[str, dict]:
    return {
        BASELINE: {"label": "baseline FP32", "path": baseline_onnx, "runtime": "onnxruntime", "precision": "f32"},
        SERVED: {"label": "served model", "path": served_onnx, "runtime": "onnxruntime", "precision": "f32"},
        PEER: {"label": "Ultralytics OpenVINO INT8 (NNCF)", "path": peer_xml, "runtime": "openvino",
               "precision": "default"},
        PEER_F32: {"label": "Ultralytics OpenVINO INT8 (NNCF), f32 float layers", "path": peer_xml,
                   "runtime": "openvino", "precision": "f32"},
        SERVED_OPENVINO: {"label": "served model's file on OpenVINO", "path": served_onnx, "runtime": "openvino",
                          "precision": "f32"},
        BASELINE_OPENVINO: {"label": "baseline FP32 on OpenVINO", "path": baseline_onnx, "runtime": "openvino",
                            "precision": "f32"},
    }


def served_model(artifacts: Path) -> tuple[Path, str, bool]:
    """(file, label, gated): what `make repo` serves (the gate's record, labelled by the report's
    row for that file), else the report's choice, said to be ungated."""
    report = Report.load(artifacts)
    try:
        gated = GatedModel.load(artifacts)
    except ToolkitError:  # no gate record, or a stale one: the report's choice, labelled as such
        return report.served.onnx, f"{report.served.model} (not gated)", False
    rows = {Path(artifacts) / row["onnx"]: row["model"] for row in report.data["rows"] if row.get("onnx")}
    return gated.onnx, rows.get(gated.onnx, gated.stage), True


def _folder_mb(path: Path) -> float:
    files = [path] if path.is_file() else []
    if path.suffix == ".xml":
        files = [path, path.with_suffix(".bin")]
    return round(sum(f.stat().st_size for f in files if f.exists()) / 1e6, 3)


def comparison(rows: dict[str, dict], latency: dict[str, dict]) -> list[str]:
    """Where the served model wins and where it loses against the peer, in words from the numbers."""
    lines = []
    served, peer = rows[SERVED], rows[PEER]
    for batch in BATCH_SIZES:
        ratio = speedup(latency, PEER, SERVED, batch)
        side = "faster" if ratio["estimate"] >= 1 else "slower"
        beyond = ratio["p10"] > 1 or ratio["p90"] < 1
        lines.append(f"batch {batch}: the served model is {ratio['estimate']:.2f}x the peer's speed ({side}"
                     f"{'' if beyond else ', within the noise'}; interval {ratio['p10']:.2f}-{ratio['p90']:.2f})")
    points = round(100 * (served["map50_95"] - peer["map50_95"]), 2)
    lines.append(f"mAP50-95: the served model {'+' if points >= 0 else ''}{points:.2f} points against the peer "
                 f"({served['map50_95']:.4f} vs {peer['map50_95']:.4f}, same evaluator)")
    for batch in BATCH_SIZES:
        ratio = speedup(latency, SERVED_OPENVINO, SERVED, batch)
        lines.append(f"batch {batch}: the served file runs {ratio['estimate']:.2f}x as fast on ONNX Runtime as on "
                     f"OpenVINO f32 (interval {ratio['p10']:.2f}-{ratio['p90']:.2f})")
    return lines


def run(artifacts: Path, out_dir: Path, threads: int | None = None, rounds: dict[int, int] | None = None,
        limit: int | None = None) -> dict:
    from compress.evaluate import evaluate_onnx
    from compress.export import read_info

    artifacts = Path(artifacts)
    manifest = Manifest(artifacts)
    if manifest.get("export") is None or manifest.get("dataset") is None:
        raise InputFileError(f"no exported baseline in {artifacts}", hint="run `make pipeline` first")
    data_yaml = manifest.output("dataset", "data_yaml")
    weights, baseline_onnx = manifest.output("baseline", "weights"), manifest.output("export", "onnx")
    imgsz = read_info(baseline_onnx).image_size[0]
    served_onnx, served_label, gated = served_model(artifacts)
    threads = threads or serving_threads()
    peer_xml = export_peer(weights, data_yaml, imgsz, out_dir)
    rows = peer_rows(baseline_onnx, served_onnx, peer_xml)
    rows[SERVED]["label"] = f"served: {served_label}"
    rows[SERVED_OPENVINO]["label"] = f"served file on OpenVINO: {served_label}"
    for key, row in rows.items():
        row["file_mb"] = _folder_mb(Path(row["path"]))
        row.update(evaluate_onnx(row["path"], data_yaml, threads=threads, limit=limit, runtime=row["runtime"],
                                 precision=row["precision"]))
    with stage("peer: Ultralytics' validator on the peer and the baseline checkpoint"):
        validator = {"peer": ultralytics_val(peer_xml.parent, data_yaml, imgsz),
                     "baseline_pt": ultralytics_val(weights, data_yaml, imgsz)}
    with competing_load() as machine_load:
        latency = latency_in_workers(rows, (imgsz, imgsz), threads, rounds)
    for key, row in rows.items():
        row.update({f"bs{b}_ms": latency[key][f"bs{b}_ms"] for b in BATCH_SIZES})
        row["facts"] = latency[key]["facts"]
        row["speedup"] = {f"bs{b}": speedup(latency, BASELINE, key, b) for b in BATCH_SIZES}
        row["path"] = str(row["path"])
    result = {"machine": describe_machine(), "threads": threads, "imgsz": imgsz, "gated": gated,
              "rounds": rounds or ROUNDS, "versions": _versions(), "calibration_split": CALIBRATION_SPLIT,
              "rows": rows, "ultralytics_validator": validator, "machine_load": machine_load,
              "comparison": comparison(rows, latency), "latency": latency}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "peers.json", result)
    (out_dir / "peers.md").write_text(markdown(result))
    plot(result, out_dir / "peers.png")
    return result


def markdown(result: dict) -> str:
    rows = result["rows"]
    lines = [f"{machine_line(result['machine'])} {result['threads']} thread(s) per model (a served detector "
             f"instance's share), {result['imgsz']}x{result['imgsz']}; "
             + ", ".join(f"{k} {v}" for k, v in result["versions"].items()) + ".", "",
             "| model | runtime | float layers | MB | bs1 ms | bs8 ms | speed-up bs1 | speed-up bs8 | mAP50-95 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows.values():
        precision = row["facts"].get("inference_precision", "f32") if row["runtime"] == "openvino" else "f32"
        speed = [f"{row['speedup'][f'bs{b}']['estimate']:.2f}x ({row['speedup'][f'bs{b}']['p10']:.2f}-"
                 f"{row['speedup'][f'bs{b}']['p90']:.2f})" for b in BATCH_SIZES]
        lines.append(f"| {row['label']} | {row['runtime']} | {precision} | {row['file_mb']} | {row['bs1_ms']:.2f} | "
                     f"{row['bs8_ms']:.2f} | {speed[0]} | {speed[1]} | {row['map50_95']:.4f} |")
    validator = result["ultralytics_validator"]
    lines += ["", "Latency: the fastest decile of interleaved rounds, each model in its own process; speed-ups "
              "against the FP32 baseline on ONNX Runtime with their bootstrap interval (p10-p90). mAP50-95: one "
              "evaluator for every row (the served pre/post-processing, Ultralytics' matching). Ultralytics' own "
              f"validator: peer {validator['peer']['map50_95']:.4f}, baseline checkpoint "
              f"{validator['baseline_pt']['map50_95']:.4f} (its letterbox and decode differ from the served ones).",
              f"The peer is calibrated by NNCF on the `{result['calibration_split']}` split (Ultralytics' default, "
              "the val split, is the one measured here).", "",
              "Where the served model wins and where it loses:", ""]
    lines += [f"- {line}" for line in result["comparison"]]
    load = result.get("machine_load") or {}
    if load.get("busy"):
        lines += ["", f"Other processes kept {load['other_processes_cores']} cores busy during the timing: "
                  "the figures are those of a loaded machine."]
    if not result["gated"]:
        lines += ["", "The served row is the report's choice: no parity gate record passed it (run `make parity`)."]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    rows = list(result["rows"].values())
    with saved_figure(path, columns=len(BATCH_SIZES), size=(10, 4.5)) as (figure, axes):
        for axis, batch in zip(axes, BATCH_SIZES):
            for row in rows:
                axis.scatter(row[f"bs{batch}_ms"], row["map50_95"], s=40)
                axis.annotate(row["label"].split(":")[0][:32], (row[f"bs{batch}_ms"], row["map50_95"]), fontsize=7,
                              xytext=(4, 2), textcoords="offset points")
            axis.set_xlabel(f"batch {batch} latency (ms, fastest decile)")
            axis.set_ylabel("mAP50-95 (one evaluator)")
            axis.grid(alpha=0.3)
        figure.suptitle(f"Served model vs Ultralytics' OpenVINO INT8 export ({result['threads']} thread(s))")


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--out", type=Path, help="default <artifacts>/peers")
    parser.add_argument("--threads", type=int, help="threads per model (default a served detector instance's share)")
    parser.add_argument("--rounds", type=int, nargs=len(BATCH_SIZES), help=f"interleaved rounds per batch size {BATCH_SIZES}")
    parser.add_argument("--limit", type=int, help="evaluate on the first N val images only")
    args = parser.parse_args(argv)
    result = run(args.artifacts, args.out or args.artifacts / "peers", args.threads,
                 dict(zip(BATCH_SIZES, args.rounds)) if args.rounds else None, args.limit)
    print(markdown(result))


if __name__ == "__main__":
    main()
