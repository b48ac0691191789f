"""The served model on OpenVINO (`make openvino`): quantized the way OpenVINO runs it fastest, held
to the parity gate's checks, and timed beside the ONNX Runtime file it would replace.

1. The gated INT8 model's FP32 twin quantized by NNCF with the served recipe (its calibration
   images and float layers; compress.openvino_quantize) -> <artifacts>/openvino/model.xml.
2. The parity gate's checks on the IR, unchanged in what they prove (tools.gate.check):
   Polygraphy on real val images (the FP32 twin on ONNX Runtime vs the IR on OpenVINO, through
   tools.runners.OpenVinoRunner), agreement with the FP32 twin (box recall, score drift, class
   flips) and mAP50-95 against the twin and the reference, within the allowances the parity gate
   gives the report's choice. The IR runs at OpenVINO's own float precision for the CPU (bf16
   where the CPU has it: what is fastest, and what the served detector then runs).
3. Speed: the gated ONNX file on ONNX Runtime and the IR on OpenVINO, each in a process of its
   own, rounds interleaved, detector alone and end to end (with the served post-processing), at
   batch 1 and 8, with one served detector instance's thread share.
The record (<artifacts>/openvino/openvino.json, compress.records.OpenVinoModel, tied to the gated
model's bytes and the IR's) is what `make repo RUNTIME=openvino` serves from, only when it passed;
RUNTIME=auto serves it when it also was faster at both batch sizes beyond the noise (the low end
of each bootstrap interval above 1). Report: openvino.md.
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path

from compress.errors import GateFailedError, UnsupportedModelError, cli_entry

PRECISION = "default"  # OpenVINO's float precision for the CPU: what it runs fastest


def run(artifacts: Path, threads: int | None = None, rounds: dict[int, int] | None = None) -> dict:
    from compress.benchmark import BATCH_SIZES, competing_load, interleaved_rounds, save_frames, speedup, timing_workers
    from compress.detection import SERVED_IOU, SERVED_MAX_DET
    from compress.env import describe_machine, serving_threads
    from compress.evaluate import evaluate_onnx, val_split
    from compress.export import read_info
    from compress.manifest import Manifest
    from compress.openvino_quantize import served_twin
    from compress.records import GatedModel, OpenVinoModel, Report, SearchRecord
    from tools.agreement import shadow_baseline, task_parity
    from tools.compare import polygraphy_compare, val_feeds
    from tools.gate import Gate, check, report_maps
    from tools.runners import OpenVinoRunner, onnx_runner

    artifacts = Path(artifacts)
    manifest = Manifest(artifacts)
    gated, report = GatedModel.load(artifacts), Report.load(artifacts)
    if report.served.name != gated.stage:
        raise GateFailedError(f"the report now serves {report.served.name}, but the parity gate passed {gated.stage}",
                              hint="run `make parity` first")
    data_yaml = manifest.output("dataset", "data_yaml")
    info = read_info(gated.onnx)
    out_dir = artifacts / "openvino"
    out_dir.mkdir(parents=True, exist_ok=True)
    twin = served_twin(artifacts, data_yaml, info.image_size, out_dir / "model.xml", gated.onnx)
    if twin is None:
        raise UnsupportedModelError(f"the gated model {gated.stage} is not an INT8 model with a recorded calibration: "
                                    "there is nothing for NNCF to quantize",
                                    hint="OpenVINO serving is for an INT8 choice (the default budgets choose one)")
    xml, quantization = twin
    fp32 = report.served.fp32_onnx
    # the thresholds the gated model passed under (older gate records: the defaults)
    gate = Gate(**(gated.gate or {})).for_choice(report.served)
    openvino = {"runtime": "openvino", "precision": PRECISION}
    threads = threads or serving_threads()

    print("==> OpenVINO twin: Polygraphy, agreement and mAP against the FP32 twin (the parity gate's checks)", flush=True)
    comparison = polygraphy_compare("fp32_vs_openvino", [onnx_runner(fp32, "onnx-fp32"),
                                                         OpenVinoRunner(xml, info.image_size, PRECISION, "openvino-int8")],
                                    val_feeds(data_yaml, info.image_size), info, gate.box_atol_frac, gate.score_atol,
                                    out_dir)
    maps = report_maps(report, SearchRecord.load(manifest).reference.row_key)
    maps["onnxruntime_int8"] = maps["int8"]
    maps["int8"] = evaluate_onnx(xml, data_yaml, threads=threads, **openvino)["map50_95"]
    measured = {"polygraphy": [comparison], "skipped": {},
                "task": task_parity(fp32, xml, data_yaml, gate.detection_conf, candidate_runtime=openvino), "map": maps}
    checks = check(gate, measured)
    passed = all(ok for *_, ok in checks)

    print(f"==> OpenVINO twin: speed beside the ONNX Runtime file ({threads} thread(s) each, own processes)", flush=True)
    models = {"onnxruntime": {"path": gated.onnx, "runtime": "onnxruntime"}, "openvino": {"path": xml, **openvino}}
    frames = save_frames([t.path.read_bytes() for t in val_split(data_yaml, max(BATCH_SIZES))], info.image_size,
                         out_dir / "frames.npz")
    with competing_load() as machine_load, timing_workers(models, info.image_size, threads, frames) as timers:
        detector = interleaved_rounds(timers, rounds, pause_s=0.05)
        end_to_end = interleaved_rounds({k: partial(t, end_to_end=True) for k, t in timers.items()}, rounds,
                                        pause_s=0.05)
        # the boxes the last end-to-end request returned: what the end-to-end figure timed
        facts = {name: {**timer.facts, "end_to_end_boxes": timer.last_boxes} for name, timer in timers.items()}
    ratios = {f"bs{b}": speedup(end_to_end, "onnxruntime", "openvino", b) for b in BATCH_SIZES}
    detector_ratios = {f"bs{b}": speedup(detector, "onnxruntime", "openvino", b) for b in BATCH_SIZES}
    shadow = None
    if passed and gated.shadow:  # what the served shadow holds the IR against (the gate measured the ONNX file's)
        s = gated.shadow
        shadow = shadow_baseline(s["reference_onnx"], xml, data_yaml, s["conf"], s.get("iou", SERVED_IOU),
                                 s.get("max_det", SERVED_MAX_DET), candidate_runtime=openvino)
        shadow["reference"] = s.get("reference")
    result = {"machine": describe_machine(), "threads": threads, "gated_stage": gated.stage, "precision": PRECISION,
              "quantization": quantization, "gate": json.loads(json.dumps(gate.__dict__)),
              "checks": [list(row) for row in checks], "passed": passed, "measured": measured,
              "latency": {"detector": detector, "end_to_end": end_to_end}, "facts": facts,
              "speedup": {k: v["estimate"] for k, v in ratios.items()}, "speedup_interval": ratios,
              "detector_speedup": detector_ratios, "machine_load": machine_load}
    OpenVinoModel.record(artifacts, xml, gated, PRECISION, facts["openvino"]["inference_precision"], passed,
                         result["speedup"], {k: v["p10"] for k, v in ratios.items()},
                         {k: result[k] for k in ("checks", "speedup_interval", "detector_speedup", "threads", "machine")},
                         shadow)
    (out_dir / "openvino_gate.json").write_text(json.dumps(result, indent=2, default=str))
    (out_dir / "openvino.md").write_text(markdown(result))
    return result


def markdown(result: dict) -> str:
    from compress.env import machine_line

    lines = ["# The served model on OpenVINO", "", machine_line(result.get("machine")), "",
             f"The gated model ({result['gated_stage']}) quantized for OpenVINO by NNCF with its own recipe "
             f"({result['quantization'].get('calibration_images')} calibration images, "
             f"{len(result['quantization'].get('float_convolutions', []))} convolutions kept float), float layers at "
             f"OpenVINO's precision for this CPU ({result['facts']['openvino'].get('inference_precision')}).", "",
             "| check | wanted | measured | passed |", "|---|---|---|---|"]
    lines += [f"| {name} | {wanted} | {value} | {'yes' if ok else 'NO'} |" for name, wanted, value, ok in result["checks"]]
    maps = result["measured"]["map"]
    lines += ["", f"mAP50-95: OpenVINO twin {maps['int8']:.4f}, the ONNX Runtime file {maps['onnxruntime_int8']:.4f}, "
                  f"FP32 twin {maps['fp32']:.4f}, reference {maps['reference']:.4f}.", "",
              f"| batch | ONNX Runtime end to end (ms) | OpenVINO end to end (ms) | OpenVINO speed-up (interval) | "
              f"detector alone: speed-up |", "|---:|---:|---:|---:|---:|"]
    for key, ratio in result["speedup_interval"].items():
        e2e, det = result["latency"]["end_to_end"], result["detector_speedup"][key]
        lines.append(f"| {key[2:]} | {e2e['onnxruntime'][f'{key}_ms']:.2f} | {e2e['openvino'][f'{key}_ms']:.2f} | "
                     f"{ratio['estimate']:.2f}x ({ratio['p10']:.2f}-{ratio['p90']:.2f}) | {det['estimate']:.2f}x |")
    faster = all(v["p10"] > 1.0 for v in result["speedup_interval"].values())
    lines += ["", f"Each runtime in a process of its own, {result['threads']} thread(s) (one served detector instance's "
                  "share), rounds interleaved; latency is the fastest decile, the interval the bootstrap p10-p90.", "",
              f"Verdict: gate {'passed' if result['passed'] else 'FAILED'}; OpenVINO "
              f"{'faster' if faster else 'not faster'} at every batch size beyond the noise (p10 of each interval "
              "above 1). `make repo RUNTIME=openvino` "
              + ("serves it; RUNTIME=auto " + ("serves it too." if faster else "keeps ONNX Runtime.")
                 if result["passed"] else "refuses it."), ""]
    return "\n".join(lines)


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--threads", type=int, help="threads per model (default: one served detector instance's share)")
    args = parser.parse_args(argv)
    result = run(args.artifacts, args.threads)
    print(markdown(result))
    print(f"report: {args.artifacts / 'openvino' / 'openvino.md'}")
    if not result["passed"]:
        raise GateFailedError("the OpenVINO twin failed the parity gate's checks (see the table above)",
                              hint="serve the ONNX Runtime file (RUNTIME=onnxruntime, the default)")


if __name__ == "__main__":
    main()
