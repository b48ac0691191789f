"""The served model beside a CPU user's first alternative, in one run (`make bench-peers`).

    python -m compress.peer_bench --artifacts artifacts

The peer is Ultralytics' own `yolo export format=openvino quantize=8` of the same FP32 baseline:
NNCF post-training quantization, no pruning, no training, run with Ultralytics' runtime settings
(OpenVINO's `LATENCY` hint and default float precision on this CPU), at the same thread count as
every other row. Its calibration is Ultralytics' except for the split: all of the training
split, the one the project's INT8 calibrates on (Ultralytics' default is the val split, the one
the mAP is measured on).

Rows (each in a process of its own, rounds interleaved, at the thread count of a served detector
instance; compress/benchmark.py):
    baseline FP32 on ONNX Runtime          the speed-ups' denominator, as in the report
    served model on ONNX Runtime           what `make repo` serves (the gate's record)
    Ultralytics OpenVINO INT8 (NNCF)       the peer, at OpenVINO's default precision and at f32
    served model's file on OpenVINO f32    is OpenVINO a faster runtime for the project's own file?
    served model's FP32 twin, NNCF INT8    ... or for the same model quantized the way OpenVINO runs
      on OpenVINO (default and f32)        fastest (compress/openvino_quantize.py: same images and
                                           float layers as the served Q/DQ file)
    baseline FP32 on OpenVINO f32          ... and for the FP32 model?
Each is timed twice: the detector file alone, and end to end (detector plus the served
post-processing on real val frames): the peer's graph decodes boxes inside, the served one leaves
that to its postprocess, so only end to end compares like with like. mAP50-95 of every row by one
evaluator (compress/evaluate.py), plus Ultralytics' own validator on the peer and the checkpoint.
Writes peers.json, peers.md and peers.png into `--out` (default <artifacts>/peers/).
"""

from __future__ import annotations

import argparse
import shutil
from functools import partial
from pathlib import Path

from compress.benchmark import (BATCH_SIZES, ROUNDS, competing_load, input_size, interleaved_rounds, save_frames, speedup,
                                timing_workers)
from compress.env import describe_machine, machine_line, serving_threads, telemetry_off
from compress.errors import InputFileError, ToolkitError, cli_entry
from compress.manifest import Manifest, file_hash
from compress.plotting import saved_figure
from compress.budget import Reference, points_below, status
from compress.records import GatedModel, Report, SearchRecord, read_json, write_json
from compress.progress import stage

BASELINE = "baseline_ort"
SERVED = "served_ort"
PEER = "peer_openvino"
PEER_F32 = "peer_openvino_f32"
SERVED_OPENVINO = "served_openvino_f32"
BASELINE_OPENVINO = "baseline_openvino_f32"
SERVED_NNCF = "served_nncf_openvino"
SERVED_NNCF_F32 = "served_nncf_openvino_f32"
CALIBRATION_SPLIT = "train"
# `yolo export format=openvino quantize=8` (the older spelling: int8=True), calibrated on the train split
EXPORT_ARGS = {"format": "openvino", "quantize": 8, "split": CALIBRATION_SPLIT, "batch": 1, "device": "cpu"}


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("openvino", "nncf", "ultralytics", "onnxruntime")}


def export_peer(weights: Path, data_yaml: Path, imgsz: int, out_dir: Path, data_hash: str = "") -> Path:
    """Ultralytics' OpenVINO INT8 export of `weights` (its .xml); made again only when the weights,
    the data (`data_hash`) or the tools changed."""
    from compress import data, yolo

    out_dir.mkdir(parents=True, exist_ok=True)
    record_path = out_dir / "peer_export.json"
    wanted = {"weights_sha256": file_hash(weights), "data": data_hash, "imgsz": imgsz, "export": EXPORT_ARGS,
              "versions": _versions()}
    copy = out_dir / "baseline.pt"  # Ultralytics writes the export beside the weights it loads
    export_dir = out_dir / "baseline_int8_openvino_model"
    if record_path.exists() and sorted(export_dir.glob("*.xml")):
        record = read_json(record_path, "peer export record", "delete it and run `make bench-peers` again")
        if record.get("wanted") == wanted:
            return sorted(export_dir.glob("*.xml"))[0]
    shutil.rmtree(export_dir, ignore_errors=True)
    record_path.unlink(missing_ok=True)
    shutil.copy2(weights, copy)
    with stage("peer: Ultralytics OpenVINO INT8 export (NNCF calibration)"), telemetry_off():
        try:
            exported = Path(yolo.load(copy).export(**EXPORT_ARGS, data=str(data_yaml), imgsz=imgsz, verbose=False))
        except ToolkitError:
            raise
        except Exception as error:  # Ultralytics and NNCF raise many kinds
            raise ToolkitError(f"Ultralytics' OpenVINO INT8 export of {weights} failed: "
                               f"{(str(error).strip().splitlines() or [type(error).__name__])[0]}") from None
    xmls = sorted(exported.glob("*.xml"))
    if not xmls:
        raise ToolkitError(f"Ultralytics' OpenVINO export wrote no .xml into {exported}")
    calibration_images = len(data.load(data_yaml).split(CALIBRATION_SPLIT))  # Ultralytics calibrates on all of it
    write_json(record_path, {"wanted": wanted, "export": exported.name, "calibration_images": calibration_images})
    return xmls[0]


def ultralytics_val(model_path: Path, data_yaml: Path, imgsz: int) -> dict:
    """Ultralytics' own validator (mAP50, mAP50-95) on the val split, batch 1 (the peer's IR has a
    static batch of one, as Ultralytics exports it)."""
    from compress import yolo

    return yolo.evaluate(yolo.load(model_path), data_yaml, imgsz, batch=1)


def peer_rows(baseline_onnx: Path, served_onnx: Path, peer_xml: Path) -> dict[str, dict]:
    def row(label, short, path, runtime, precision):
        return {"label": label, "short": short, "path": path, "runtime": runtime, "precision": precision}

    return {
        BASELINE: row("baseline FP32", "baseline, ORT", baseline_onnx, "onnxruntime", "f32"),
        SERVED: row("served model", "served, ORT", served_onnx, "onnxruntime", "f32"),
        PEER: row("Ultralytics OpenVINO INT8 (NNCF)", "peer, OV default", peer_xml, "openvino", "default"),
        PEER_F32: row("Ultralytics OpenVINO INT8 (NNCF), f32 float layers", "peer, OV f32", peer_xml, "openvino",
                      "f32"),
        SERVED_OPENVINO: row("served model's file on OpenVINO", "served, OV f32", served_onnx, "openvino", "f32"),
        BASELINE_OPENVINO: row("baseline FP32 on OpenVINO", "baseline, OV f32", baseline_onnx, "openvino", "f32"),
    }


def nncf_twin(artifacts: Path, data_yaml: Path, image_size: tuple[int, int], out_dir: Path,
              served_onnx: Path) -> tuple[Path, dict] | None:
    """The served model's NNCF twin for the peer table (compress.openvino_quantize.served_twin)."""
    from compress.openvino_quantize import served_twin

    return served_twin(artifacts, data_yaml, image_size, out_dir / "served_nncf" / "model.xml", served_onnx)


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


def _ratio_words(ratio: dict, subject: str, other: str) -> str:
    side = "faster than" if ratio["estimate"] >= 1 else "slower than"
    beyond = ratio["p10"] > 1 or ratio["p90"] < 1
    return (f"{subject} is {ratio['estimate']:.2f}x {other}'s speed ({side} it"
            f"{'' if beyond else ', within the noise'}; interval {ratio['p10']:.2f}-{ratio['p90']:.2f})")


def comparison(rows: dict[str, dict], latency: dict[str, dict], end_to_end: dict[str, dict],
               reference: Reference | None = None, budget_points: float | None = None) -> list[str]:
    """Where the served model wins and where it loses against the peer, in words from the numbers.
    Speed is judged end to end (detector and the served post-processing on real frames): the
    peer's graph decodes boxes inside, the served model's postprocess does it outside. With the
    search's `reference` and the budget: whether each side is within MAX_MAP_DROP."""
    lines = []
    for batch in BATCH_SIZES:
        lines.append(f"batch {batch}, end to end: "
                     + _ratio_words(speedup(end_to_end, PEER, SERVED, batch), "the served model", "the peer"))
    served, peer = rows[SERVED], rows[PEER]
    points = round(100 * (served["map50_95"] - peer["map50_95"]), 2)
    lines.append(f"mAP50-95: the served model {points:+.2f} points against the peer "
                 f"({served['map50_95']:.4f} vs {peer['map50_95']:.4f}, same evaluator)")
    for batch in BATCH_SIZES:
        lines.append(f"batch {batch}, detector only: " + _ratio_words(
            speedup(latency, SERVED_OPENVINO, SERVED, batch), "the served file on ONNX Runtime", "OpenVINO f32"))
    if SERVED_NNCF in rows:
        for batch in BATCH_SIZES:
            lines.append(f"batch {batch}, end to end: " + _ratio_words(
                speedup(end_to_end, SERVED_NNCF, SERVED, batch), "the served model on ONNX Runtime",
                "its NNCF INT8 on OpenVINO"))
        points = round(100 * (served["map50_95"] - rows[SERVED_NNCF]["map50_95"]), 2)
        lines.append(f"mAP50-95: the served Q/DQ file {points:+.2f} points against its NNCF INT8 on OpenVINO "
                     f"({served['map50_95']:.4f} vs {rows[SERVED_NNCF]['map50_95']:.4f})")
    if reference is not None and budget_points is not None:
        def held(key: str) -> str:
            drop = points_below(reference.map50_95, rows[key]["map50_95"])
            return f"{abs(drop):.2f} points {'below' if drop >= 0 else 'above'} it ({status(drop, budget_points)})"

        lines.append(f"budget: against the reference ({reference.stage}, {reference.map50_95:.4f}) with "
                     f"MAX_MAP_DROP={budget_points:g}, the served model is {held(SERVED)}, the peer {held(PEER)}")
    return lines


def run(artifacts: Path, out_dir: Path, threads: int | None = None, rounds: dict[int, int] | None = None,
        limit: int | None = None) -> dict:
    from compress.evaluate import evaluate_onnx, val_split
    from compress.export import read_info

    artifacts = Path(artifacts)
    manifest = Manifest(artifacts)
    if manifest.get("export") is None or manifest.get("dataset") is None:
        raise InputFileError(f"no exported baseline in {artifacts}", hint="run `make pipeline` first")
    data_yaml = manifest.output("dataset", "data_yaml")
    weights, baseline_onnx = manifest.output("baseline", "weights"), manifest.output("export", "onnx")
    image_size = read_info(baseline_onnx).image_size
    served_onnx, served_label, gated = served_model(artifacts)
    threads = threads or serving_threads()
    peer_xml = export_peer(weights, data_yaml, image_size[0], out_dir, manifest.get("dataset").metrics["content_hash"])
    rows = peer_rows(baseline_onnx, served_onnx, peer_xml)
    rows[SERVED]["label"] = f"served: {served_label}"
    rows[SERVED_OPENVINO]["label"] = f"served file on OpenVINO: {served_label}"
    twin = nncf_twin(artifacts, data_yaml, read_info(served_onnx).image_size, out_dir, served_onnx)
    if twin is not None:
        rows[SERVED_NNCF] = {"label": "served model's FP32 twin, NNCF INT8 on OpenVINO", "short": "served NNCF, OV default",
                             "path": twin[0], "runtime": "openvino", "precision": "default"}
        rows[SERVED_NNCF_F32] = {**rows[SERVED_NNCF], "label": "served model's FP32 twin, NNCF INT8 on OpenVINO, f32 "
                                 "float layers", "short": "served NNCF, OV f32", "precision": "f32"}
    for row in rows.values():
        row["file_mb"] = _folder_mb(Path(row["path"]))
        row.update(evaluate_onnx(row["path"], data_yaml, threads=threads, limit=limit, runtime=row["runtime"],
                                 precision=row["precision"]))
    with stage("peer: Ultralytics' validator on the peer and the baseline checkpoint"):
        validator = {"peer": ultralytics_val(peer_xml.parent, data_yaml, image_size[0]),
                     "baseline_pt": ultralytics_val(weights, data_yaml, image_size[0])}
    # real val frames, prepared as the served preprocess prepares them: the post-processing's cost
    # depends on how many anchors pass the threshold, which random input does not show
    # (a served model of a smaller input size gets the same frames letterboxed to its own size)
    payloads = [t.path.read_bytes() for t in val_split(data_yaml, max(BATCH_SIZES))]
    frames: dict[tuple[int, int], Path] = {}
    for row in rows.values():
        size = input_size(row["path"], image_size)
        if size not in frames:
            name = "frames.npz" if size == tuple(image_size) else f"frames_{size[0]}x{size[1]}.npz"
            frames[size] = save_frames(payloads, size, out_dir / name)
        row["frames"], row["imgsz"] = frames[size], size[0]
    with competing_load() as machine_load, timing_workers(rows, image_size, threads) as timers:
        latency = interleaved_rounds(timers, rounds, pause_s=0.05)
        end_to_end = interleaved_rounds({k: partial(t, end_to_end=True) for k, t in timers.items()}, rounds,
                                        pause_s=0.05)
        facts = {key: timer.facts for key, timer in timers.items()}
    for key, row in rows.items():
        row.update({f"bs{b}_ms": latency[key][f"bs{b}_ms"] for b in BATCH_SIZES})
        row.update({f"end_to_end_bs{b}_ms": end_to_end[key][f"bs{b}_ms"] for b in BATCH_SIZES})
        row["facts"] = facts[key]
        row["speedup"] = {f"bs{b}": speedup(latency, BASELINE, key, b) for b in BATCH_SIZES}
        row["end_to_end_speedup"] = {f"bs{b}": speedup(end_to_end, BASELINE, key, b) for b in BATCH_SIZES}
        row["path"] = str(row["path"])
        row["frames"] = str(row["frames"].relative_to(out_dir))
    export_record = read_json(out_dir / "peer_export.json", "peer export record", "run `make bench-peers` again")
    served_quantization = Report.load(artifacts).served.quantization or {}
    search = SearchRecord.load(manifest)
    result = {"machine": describe_machine(), "threads": threads, "imgsz": image_size[0], "gated": gated,
              "rounds": rounds or ROUNDS, "versions": _versions(), "calibration_split": CALIBRATION_SPLIT,
              "calibration_images": {"peer": export_record.get("calibration_images"),
                                     "served": served_quantization.get("calibration_images")},
              "nncf_twin": twin[1] if twin else None,
              "rows": rows, "ultralytics_validator": validator, "machine_load": machine_load,
              "comparison": comparison(rows, latency, end_to_end, search.reference, search.budget_points),
              "latency": latency, "end_to_end": end_to_end}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "peers.json", result)
    (out_dir / "peers.md").write_text(markdown(result))
    plot(result, out_dir / "peers.png")
    return result


def _interval(ratio: dict) -> str:
    return f"{ratio['estimate']:.2f}x ({ratio['p10']:.2f}-{ratio['p90']:.2f})"


def markdown(result: dict) -> str:
    rows = result["rows"]
    lines = [f"{machine_line(result['machine'])} {result['threads']} thread(s) per model (a served detector "
             f"instance's share), {result['imgsz']}x{result['imgsz']}"
             + "".join(f" ({row['label']}: {size}x{size})" for row in rows.values()
                       if (size := row.get("imgsz", result["imgsz"])) != result["imgsz"]) + "; "
             + ", ".join(f"{k} {v}" for k, v in result["versions"].items()) + ".", "",
             "| model | runtime | float layers | MB | detector bs1 / bs8 ms | end to end bs1 / bs8 ms | "
             "speed-up end to end bs1 | bs8 | mAP50-95 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows.values():
        facts = row["facts"]
        runtime = row["runtime"] + (f" ({', '.join(p.removesuffix('ExecutionProvider') for p in facts['providers'])})"
                                    if row["runtime"] == "onnxruntime" else "")
        speed = [_interval(row["end_to_end_speedup"][f"bs{b}"]) for b in BATCH_SIZES]
        lines.append(f"| {row['label']} | {runtime} | {facts.get('inference_precision', 'f32')} | {row['file_mb']} | "
                     f"{row['bs1_ms']:.2f} / {row['bs8_ms']:.2f} | {row['end_to_end_bs1_ms']:.2f} / "
                     f"{row['end_to_end_bs8_ms']:.2f} | {speed[0]} | {speed[1]} | {row['map50_95']:.4f} |")
    validator, counts = result["ultralytics_validator"], result["calibration_images"]
    lines += ["",
              "Detector: the model file alone (the peer's graph also decodes boxes; the served model leaves that to "
              "its postprocess). End to end: detector plus the served post-processing (decode, class-aware NMS) on "
              "real val frames prepared as the served preprocess prepares them. Each model runs in its own process, "
              "rounds interleaved; latency is the fastest decile, speed-ups are against the FP32 baseline on ONNX "
              "Runtime with their bootstrap interval (p10-p90). The peer's IR has a static batch of one, as "
              "Ultralytics exports it; at batch 8 it is reshaped and compiled for 8 (Ultralytics itself would run "
              "eight batch-1 calls).",
              "mAP50-95: one evaluator for every row (the served pre/post-processing, Ultralytics' matching). "
              f"Ultralytics' own validator: peer {validator['peer']['map50_95']:.4f}, baseline checkpoint "
              f"{validator['baseline_pt']['map50_95']:.4f} (its letterbox and decode differ from the served ones).",
              f"Calibration: the peer by NNCF on all {counts['peer']} images of the `{result['calibration_split']}` "
              "split (Ultralytics' default split, val, is the one measured here); the served model's INT8 on "
              f"{counts['served'] if counts['served'] is not None else 'no'} images of the same split"
              + (", and its NNCF twin on the same images with the same layers kept float "
                 f"({len(result['nncf_twin']['float_convolutions'])} convolutions)" if result.get("nncf_twin") else "")
              + ".", "",
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
                x = row[f"end_to_end_bs{batch}_ms"]
                axis.scatter(x, row["map50_95"], s=40)
                axis.annotate(row["short"], (x, row["map50_95"]), fontsize=7, xytext=(4, 2), textcoords="offset points")
            axis.set_xlabel(f"batch {batch}, end to end (ms, fastest decile)")
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
