"""Build the Triton model repository for a deployment target from the pipeline's artifacts.

    python -m tools.build_repo --target local        # the embedded default (Python backend + ORT)
    python -m tools.build_repo --target onnxruntime  # NGC container, onnxruntime_onnx platform
    python -m tools.build_repo --target openvino     # NGC container, OpenVINO backend (the twin of make openvino)
    python -m tools.build_repo --target tensorrt     # NGC container, tensorrt_plan (needs the plan stage)

This is the only code that writes `config.pbtxt`. The committed Python models (preprocess,
postprocess) get the shared detection maths copied beside them as `yolo_ops.py`; the detector
folder and every config are generated. `repository.json` records what is served.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import asdict, fields
from pathlib import Path

from compress.defaults import DEFAULT_MAX_BATCH_SIZE
from compress.detection import SERVED_CONF, SERVED_IOU, SERVED_MAX_DET
from compress.errors import GateFailedError, InputFileError, MissingDependencyError, ToolkitError, cli_entry
from compress.export import read_info, with_uint8_pixels
from compress.manifest import Manifest, file_hash
from compress.records import REPORT_FILE, GatedModel, OpenVinoModel, Report, SearchRecord, model_hash
from tools import triton_config as tc
from tools.repository import RepositoryRecord
from tools.triton_config import TUNED_KEYS

TOOLS_DIR = Path(__file__).resolve().parent
SHARED_MATHS = TOOLS_DIR.parent / "compress" / "detection.py"
SESSION_SETUP = TOOLS_DIR.parent / "compress" / "onnx_session.py"
OPENVINO_SESSION = TOOLS_DIR.parent / "compress" / "openvino_session.py"
LOCAL_DETECTOR = TOOLS_DIR / "triton_models" / "onnx_detector.py"
SHADOW_CODE = TOOLS_DIR.parent / "compress" / "shadow.py"
SHADOW_FILES = ("shadow.py", "onnx_session.py", tc.SHADOW_REFERENCE_FILE)  # beside postprocess/1/model.py
PYTHON_MODELS = (tc.PREPROCESS, tc.POSTPROCESS)


def served_model(artifacts: Path, stage: str | None, target: str, allow_ungated: bool = False,
                 max_batch: int | None = None) -> tuple[str, Path]:
    """(stage, file) the detector serves: an ONNX for local/onnxruntime, a plan for tensorrt.

    Only what the parity gate passed, byte for byte (`served.json`); `allow_ungated` (with a
    loud warning) serves a named stage or an ungated file instead.
    """
    manifest = Manifest(artifacts)
    if stage is not None or allow_ungated:
        warn_ungated(f"stage {stage!r} of {artifacts}" if stage else f"the report's choice in {artifacts}")
        if target == "tensorrt":
            return "plan", _plan_file(manifest, max_batch=max_batch)
        if stage is None:
            served = Report.load(artifacts).served
            return served.name, served.onnx
        search = SearchRecord.load(manifest) if manifest.get("search") else None
        if search and stage in search.candidates:  # a search candidate by name, e.g. STAGE=relu_1.5x
            return stage, search.candidates[stage].files["int8"]
        return stage, manifest.output(stage, "onnx")
    gated = GatedModel.load(artifacts)
    report = Report.load(artifacts) if (Path(artifacts) / REPORT_FILE).exists() else None
    chosen = report.served.name if report else gated.stage
    if chosen != gated.stage:  # e.g. `make bench` re-measured and the report now chooses another model
        raise GateFailedError(f"the report now serves {chosen}, but the parity gate passed {gated.stage}",
                              hint="run `make parity` to gate the report's choice (or ALLOW_UNGATED=1)")
    if target != "tensorrt":
        return gated.stage, gated.onnx
    precision = report.served.precision if report else "int8"
    plan = _plan_file(manifest, precision, max_batch)
    built_from = manifest.get("plan").inputs.get("served")
    twin_missing = precision == "int8" and gated.trt_onnx_sha256 is None
    if twin_missing or gated.mixed_precision or built_from != gated.sha256:
        raise GateFailedError(
            "the TensorRT plan was not built from the model the parity gate passed",
            hint="the gate chose a mixed-precision model or the plan is stale: rebuild with `make plan` after "
                 "`make parity`, or override with ALLOW_UNGATED=1")
    return "plan", plan


def _plan_file(manifest: Manifest, precision: str = "int8", max_batch: int | None = None) -> Path:
    """The plan of the served model: INT8 for an INT8 model, FP16 for an FP32 one; its optimization
    profile must cover the repository's max batch."""
    record, output = manifest.get("plan"), "int8_plan" if precision == "int8" else "fp16_plan"
    if record is None or output not in record.outputs:
        raise MissingDependencyError(
            "no TensorRT plan has been built",
            hint="run `make plan` where TensorRT is installed (an NGC TensorRT/Triton container)")
    built_for = record.settings.get("max_batch", DEFAULT_MAX_BATCH_SIZE)
    if max_batch is not None and max_batch > built_for:
        raise tc.ConfigError(f"the TensorRT plan's profile stops at batch {built_for}, the repository's max batch is "
                             f"{max_batch}", hint=f"rebuild the plan with `make plan MAX_BATCH={max_batch}`")
    return manifest.output("plan", output)


def warn_ungated(what: str) -> None:
    bar = "!" * 78
    print(f"{bar}\n!! WARNING: serving {what} WITHOUT the parity gate's approval.\n"
          f"!! Nothing checked that it still detects what the original model did.\n{bar}", file=sys.stderr, flush=True)


def copy_python_models(dest: Path) -> Path:
    """The committed Python models (what a fresh clone has) into `dest`, to build a repository there."""
    source = TOOLS_DIR.parent / "model_repository"
    for name in PYTHON_MODELS:
        (dest / name / "1").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / name / "1" / "model.py", dest / name / "1" / "model.py")
    return dest


def write_warmup_files(repo: Path, settings: tc.RepositorySettings) -> None:
    """The input files the configs' model_warmup entries name (Triton reads <model>/warmup/<file>)."""
    import numpy as np

    height, width = settings.image_size
    files = {
        repo / tc.POSTPROCESS / tc.WARMUP_DIR / tc.WARMUP_LETTERBOX_FILE:
            np.array([1.0, 0.0, 0.0, width, height], dtype=np.float32).tobytes(),
    }
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def served_copy(model_file: Path, dest: Path, pixel_type: str) -> Path:
    """`model_file` as the ensemble feeds it: a Cast + Div prefix when preprocess hands over uint8
    pixels. An OpenVINO IR comes with its weights (.bin) and metadata.yaml."""
    model_file, dest = Path(model_file), Path(dest)
    if read_info(model_file).pixel_type == "float32" and pixel_type == "uint8":
        with_uint8_pixels(model_file, dest)
    elif model_file.suffix == ".xml":
        for source, target in ((model_file, dest), (model_file.with_suffix(".bin"), dest.with_suffix(".bin")),
                               (model_file.parent / "metadata.yaml", dest.parent / "metadata.yaml")):
            shutil.copyfile(source, target)
    else:
        shutil.copyfile(model_file, dest)
    return dest


def place_shadow(repo: Path, settings: tc.RepositorySettings, reference: Path | None) -> None:
    """The shadow's code and the FP32 reference beside postprocess (or none of it, when off)."""
    version_dir = repo / tc.POSTPROCESS / "1"
    for name in SHADOW_FILES:
        (version_dir / name).unlink(missing_ok=True)
    if not settings.shadow:
        return
    if reference is None:
        raise tc.ConfigError("shadow parity needs the FP32 reference to put beside the served model",
                             hint="build from the gated artifacts, pass --shadow-reference FILE, or --no-shadow")
    if read_info(reference).image_size != tuple(settings.image_size):
        raise tc.ConfigError(f"the shadow reference {reference} takes {read_info(reference).image_size}, the served "
                             f"model {tuple(settings.image_size)}: they must see the same tensor")
    shutil.copyfile(SHADOW_CODE, version_dir / "shadow.py")
    shutil.copyfile(SESSION_SETUP, version_dir / "onnx_session.py")
    served_copy(reference, version_dir / tc.SHADOW_REFERENCE_FILE, settings.pixel_type)


def build(repo: Path, model_file: Path, settings: tc.RepositorySettings, provenance: dict,
          shadow_reference: Path | None = None) -> Path:
    """`shadow_reference`: the FP32 model shadow parity compares with (needed when `settings.shadow`)."""
    repo = Path(repo)
    takes = read_info(model_file).pixel_type if settings.target != "tensorrt" else "float32"
    if takes == "uint8" and settings.pixel_type == "float32":  # checked before anything is written
        raise tc.ConfigError(f"{model_file} takes uint8 pixels; preprocess cannot feed it float32 ones",
                             hint="build with --pixel-type uint8")
    if settings.shadow and shadow_reference is None:
        raise tc.ConfigError("shadow parity needs the FP32 reference to put beside the served model",
                             hint="build from the gated artifacts, pass --shadow-reference FILE, or --no-shadow")
    if (Path(model_file).suffix == ".xml") != (settings.runtime == "openvino"):
        raise tc.ConfigError(f"{model_file} is not a file the {settings.runtime} runtime serves",
                             hint="the openvino runtime serves an OpenVINO IR (.xml), onnxruntime an ONNX file")
    for name in PYTHON_MODELS:
        version_dir = repo / name / "1"
        if not (version_dir / "model.py").exists():
            raise InputFileError(f"{version_dir / 'model.py'} is missing",
                                 hint="build into a copy of the committed model_repository/")
        shutil.copyfile(SHARED_MATHS, version_dir / "yolo_ops.py")
    detector_dir = repo / tc.DETECTOR
    if detector_dir.exists():
        shutil.rmtree(detector_dir)
    (detector_dir / "1").mkdir(parents=True)
    served_file = detector_dir / "1" / settings.detector_file_name
    if settings.target == "tensorrt":
        shutil.copyfile(model_file, served_file)
    else:
        served_copy(model_file, served_file, settings.pixel_type)
    place_shadow(repo, settings, shadow_reference)
    if settings.target == "local":
        shutil.copyfile(LOCAL_DETECTOR, detector_dir / "1" / "model.py")
        shutil.copyfile(SHARED_MATHS, detector_dir / "1" / "yolo_ops.py")
        shutil.copyfile(SESSION_SETUP, detector_dir / "1" / "onnx_session.py")
        if settings.runtime == "openvino":
            shutil.copyfile(OPENVINO_SESSION, detector_dir / "1" / "openvino_session.py")
    write_warmup_files(repo, settings)
    (repo / tc.ENSEMBLE_NAME / "1").mkdir(parents=True, exist_ok=True)
    for config in tc.all_configs(settings):
        tc.write_config(config, repo / config.name)
    provenance = dict(provenance)
    if settings.shadow:
        provenance["shadow_reference"] = str(shadow_reference)
        provenance["shadow_reference_sha256"] = file_hash(shadow_reference)
    record = RepositoryRecord(repo, provenance.pop("stage"), provenance.pop("target", settings.target),
                              Path(provenance.pop("source", model_file)), bool(provenance.pop("gated", False)),
                              model_hash(model_file), model_hash(served_file), settings, provenance.pop("tuned", None),
                              provenance)
    record.save()
    return repo


def previous_record(repo: Path) -> RepositoryRecord | None:
    """The record of what `repo` was built as before, if it was (and still parses)."""
    try:
        return RepositoryRecord.load(repo)
    except InputFileError:
        return None


def settings_from_args(args, info, previous: RepositoryRecord | None) -> tc.RepositorySettings:
    overrides = {f.name: getattr(args, f.name) for f in fields(tc.RepositorySettings)
                 if f.name != "target" and getattr(args, f.name, None) is not None}
    # tuned on this machine for this target and runtime (OpenVINO's best instance count need not be ONNX Runtime's)
    runtime = getattr(args, "runtime", None) or "onnxruntime"
    if previous and previous.tuned and previous.target == args.target and previous.settings.runtime == runtime:
        # `make tune` measured these on this machine: keep them unless overridden here.
        kept = {k: getattr(previous.settings, k) for k in TUNED_KEYS if k not in overrides}
        if kept:
            print(f"keeping tuned settings from {previous.repo / 'repository.json'}: {kept}")
            overrides = {**kept, **overrides}
    return settings_for(info, target=args.target, **overrides)


def settings_for(info, **overrides) -> tc.RepositorySettings:
    """Settings for an exported detector: image size, classes and head layout (levels' strides,
    DFL bins) come from the model itself (`compress.export.read_info`), and so does the runtime (an
    OpenVINO IR runs on openvino); the rest from `overrides` (pixel type: `RepositorySettings`'
    default for the target)."""
    overrides.setdefault("runtime", "openvino" if Path(getattr(info, "path", "")).suffix == ".xml" else "onnxruntime")
    return tc.RepositorySettings(image_size=info.image_size, num_classes=info.num_classes,
                                 head_layout=info.head_layout, strides=info.strides, reg_max=info.reg_max,
                                 **overrides)


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--repo", type=Path, default=Path("model_repository"))
    parser.add_argument("--target", choices=tc.TARGETS, default="local")
    parser.add_argument("--stage", help="serve this pipeline stage's model or search candidate, e.g. export or relu_1.5x (ungated: warns; default: the model "
                                        "the parity gate passed)")
    parser.add_argument("--onnx", type=Path, help="serve this ONNX instead of a pipeline artifact (ungated: warns)")
    parser.add_argument("--allow-ungated", action="store_true",
                        help="serve without the parity gate's record (warns loudly)")
    parser.add_argument("--max-batch-size", dest="max_batch_size", type=int)
    parser.add_argument("--preferred-batch-sizes", dest="preferred_batch_sizes", type=int, nargs="*")
    parser.add_argument("--queue-delay-us", dest="queue_delay_us", type=int)
    parser.add_argument("--detector-instances", dest="detector_instances", type=int)
    parser.add_argument("--preprocess-instances", dest="preprocess_instances", type=int)
    parser.add_argument("--postprocess-instances", dest="postprocess_instances", type=int)
    parser.add_argument("--decode-threads", dest="decode_threads", type=int,
                        help="threads decoding one preprocess batch (0: the cores the instance may use)")
    parser.add_argument("--full-decode", dest="reduced_decode", action="store_const", const=False,
                        help="decode every JPEG pixel (Ultralytics' preprocessing) instead of the smallest DCT scale "
                             "that (nearly) covers the model input")
    parser.add_argument("--conf-threshold", dest="conf_threshold", type=float)
    parser.add_argument("--iou-threshold", dest="iou_threshold", type=float)
    parser.add_argument("--device", type=lambda v: "cpu" if v.strip().lower() == "cpu" else "gpu",
                        help="detector instances: cpu or gpu (a CUDA index, as DEVICE= takes for training, is a gpu)")
    parser.add_argument("--ort-threads", dest="ort_threads", type=int)
    parser.add_argument("--pixel-type", dest="pixel_type", choices=["uint8", "float32"],
                        help="what preprocess hands the detector (default: uint8, float32 for tensorrt)")
    parser.add_argument("--max-queue-size", dest="max_queue_size", type=int,
                        help="requests a step may queue before rejecting (0: unbounded)")
    parser.add_argument("--queue-timeout-us", dest="queue_timeout_us", type=int,
                        help="longest wait in a step's queue before rejecting (0: no timeout)")
    parser.add_argument("--max-image-pixels", dest="max_image_pixels", type=int)
    parser.add_argument("--max-image-bytes", dest="max_image_bytes", type=int)
    parser.add_argument("--min-image-side", dest="min_image_side", type=int)
    parser.add_argument("--runtime", choices=(*tc.DETECTOR_RUNTIMES, "auto"), default="onnxruntime",
                        help="the local detector's runtime: onnxruntime (the gated ONNX file), openvino (its gated NNCF "
                             "twin from `make openvino`), auto (openvino where `make openvino` passed and measured it "
                             "faster at batch 1 and 8 beyond the noise, else onnxruntime)")
    parser.add_argument("--shadow", dest="shadow", action=argparse.BooleanOptionalAction, default=True,
                        help="shadow parity: the FP32 reference beside the served model, a sampled share of live "
                             "frames compared with it (default on; --no-shadow builds without it)")
    parser.add_argument("--shadow-rate", dest="shadow_rate", type=float, help="share of frames shadowed (default 0.05)")
    parser.add_argument("--shadow-max-fps", dest="shadow_max_fps", type=float,
                        help="at most this many shadowed frames per second (default 5)")
    parser.add_argument("--shadow-max-cpu", dest="shadow_max_cpu", type=float,
                        help="no shadowed frame while the server's cores are busier than this share (default 0.8; "
                             "1: only the worker being busy skips)")
    parser.add_argument("--shadow-reference", type=Path,
                        help="the FP32 ONNX shadow parity compares with (default: the gate's reference)")
    parser.add_argument("--evidence-dir", dest="evidence_dir",
                        help="where low-agreement frames are kept (relative: to the repository's parent; default evidence)")
    args = parser.parse_args(argv)
    if args.onnx:
        warn_ungated(str(args.onnx))
        stage, model_file, onnx_file = "user", args.onnx, args.onnx
    else:
        stage, model_file = served_model(args.artifacts, args.stage, args.target, args.allow_ungated,
                                         args.max_batch_size or DEFAULT_MAX_BATCH_SIZE)
        # a plan carries no ONNX metadata: its classes and size are those of the model it was built from
        onnx_file = Report.load(args.artifacts).served.onnx if args.target == "tensorrt" else model_file
    info = read_info(onnx_file)
    if not all((args.repo / name / "1" / "model.py").exists() for name in PYTHON_MODELS):
        copy_python_models(args.repo)  # a new REPO= folder: start from the committed Python models
    previous = previous_record(args.repo)
    if args.target == "local" and args.device == "gpu":
        from compress.onnx_session import execution_providers

        if "CUDAExecutionProvider" not in execution_providers():
            # `make DEVICE=gpu` trains on the GPU; the local detector can only use one through onnxruntime-gpu
            print("note: DEVICE=gpu, but this ONNX Runtime has no CUDA provider: the local target's detector "
                  "instances run on the CPU (install onnxruntime-gpu, or TARGET=onnxruntime for the NGC image)")
            args.device = "cpu"
    gated = not (args.onnx or args.stage or args.allow_ungated)
    args.runtime, openvino = detector_runtime(args, gated)
    if openvino is not None:
        model_file, args.openvino_precision = openvino.xml, openvino.precision
    reference, baseline = shadow_reference(args, gated, model_file, openvino) if args.shadow else (None, None)
    args.shadow = reference is not None
    args.shadow_baseline = baseline
    settings = settings_from_args(args, info, previous)
    if settings.target == "openvino":
        print(f"note: the image's OpenVINO backend runs every batch at max_batch_size ({settings.max_batch_size}), "
              "padding smaller ones: a single frame costs a full batch (MAX_BATCH= trades batch size for that)")
    tuned = previous.tuned if previous and previous.target == args.target and previous.settings.runtime == args.runtime \
        else None
    build(args.repo, model_file, settings, {"stage": stage, "target": args.target, "source": str(model_file),
                                            "gated": gated, **({"tuned": tuned} if tuned else {})}, reference)
    print(f"built {args.repo} (target {args.target}, serving stage {stage!r}: {model_file}, "
          f"{info.image_size[0]}x{info.image_size[1]}, {info.num_classes} classes, head {info.head_layout}, "
          f"detector instances {settings.detector_instances} x {settings.device} on {settings.runtime}, shadow parity "
          + (f"{settings.shadow_rate:.0%} of frames (<= {settings.shadow_max_fps:g}/s) vs {reference})"
             if settings.shadow else "off)"))


def detector_runtime(args, gated: bool) -> tuple[str, OpenVinoModel | None]:
    """The runtime the detector serves on, and for openvino the record of the gated twin it serves
    (`make openvino`). RUNTIME=auto falls back to onnxruntime, saying why; RUNTIME=openvino refuses
    to serve a twin that did not pass. TARGET=openvino (the NGC image's OpenVINO backend) always
    serves the twin: RUNTIME is the local target's choice."""
    image = args.target == "openvino"
    if args.runtime == "onnxruntime" and not image:
        return "onnxruntime", None
    auto = args.runtime == "auto" and not image

    def not_openvino(why: str, hint: str, error=tc.ConfigError):
        if auto:
            print(f"note: RUNTIME=auto serves on onnxruntime: {why}")
            return "onnxruntime", None
        raise error(why, hint=hint)

    if args.target not in ("local", "openvino"):
        return not_openvino(f"the openvino runtime is the local and openvino targets', not {args.target}'s",
                            "build with TARGET=local or TARGET=openvino, or RUNTIME=onnxruntime")
    if args.device == "gpu":
        return not_openvino("the openvino runtime runs on the CPU", "build with DEVICE=cpu, or RUNTIME=onnxruntime")
    if not gated:
        return not_openvino("the openvino runtime serves the gated model's OpenVINO twin only (not STAGE=, ONNX= or "
                            "ALLOW_UNGATED=)", "drop them, or RUNTIME=onnxruntime")
    try:
        record = OpenVinoModel.load(args.artifacts, GatedModel.load(args.artifacts))
    except ToolkitError as error:  # no twin, a stale or an unreadable record
        return not_openvino(error.args[0], error.hint or "run `make openvino`", type(error))
    from compress.openvino_session import precision_here

    here = precision_here(record.precision)
    if image:  # the serving machine's CPU resolves the float precision, not this one
        print(f"note: `make openvino` gated the twin with {record.inference_precision} float layers on this machine; "
              "the image's OpenVINO backend resolves them on the CPU it runs on (run `make openvino` on that kind of "
              "machine to hold it to the gate there)")
    elif here != record.inference_precision:
        return not_openvino(f"`make openvino` gated the twin with {record.inference_precision} float layers; OpenVINO "
                            f"runs them in {here} on this machine", "run `make openvino` on the machine that serves",
                            GateFailedError)
    if not record.passed:
        return not_openvino("the OpenVINO twin failed the parity gate's checks (artifacts/openvino/openvino.md)",
                            "serve with RUNTIME=onnxruntime", GateFailedError)
    if auto and not record.faster:
        speed = ", ".join(f"{k} {v:.2f}x" for k, v in record.speedup.items())
        return not_openvino(f"OpenVINO was not faster at every batch size ({speed} of ONNX Runtime's speed)", "")
    return "openvino", record


def shadow_reference(args, gated: bool, model_file: Path,
                     openvino: OpenVinoModel | None = None) -> tuple[Path | None, dict | None]:
    """(the FP32 reference, the baseline) shadow parity runs with: the gate's record when the gated
    model is served, else --shadow-reference or the search's reference. The baseline is the gate's
    (for the OpenVINO twin: `make openvino`'s) when it was measured at this repository's
    thresholds, else it is measured here on the val split (an ungated model, or other thresholds,
    is held against what it does there)."""
    from tools.agreement import baseline_matches, shadow_baseline

    conf = args.conf_threshold if args.conf_threshold is not None else SERVED_CONF
    iou = args.iou_threshold if args.iou_threshold is not None else SERVED_IOU
    served_runtime = {"runtime": "openvino", "precision": openvino.precision} if openvino else None
    if gated and args.shadow_reference is None:
        record = GatedModel.load(args.artifacts)
        if record.shadow is None:
            raise GateFailedError("the parity gate's record predates shadow parity (no reference recorded)",
                                  hint="run `make parity` again, or build with SHADOW=0")
        reference, baseline = record.shadow_reference, {k: v for k, v in record.shadow.items() if k != "reference_onnx"}
        if openvino is not None:
            baseline = openvino.shadow or {}
        if baseline_matches(baseline, conf, iou, SERVED_MAX_DET):
            return reference, baseline
        print(f"note: the gate measured the shadow baseline at conf {baseline.get('conf')}; this repository serves at "
              f"conf {conf}, IoU {iou}: measuring it again on the val split")
    else:
        reference = args.shadow_reference
        if reference is None:
            try:
                report = Report.load(args.artifacts)
                key = SearchRecord.load(Manifest(args.artifacts)).reference.row_key
                row = {r["key"]: r for r in report.data["rows"]}[key]
            except (InputFileError, KeyError):
                print("note: no FP32 reference for shadow parity (no search in the artifacts): built without it; "
                      "pass --shadow-reference FILE to add one")
                return None, None
            from tools.gate import shadow_reference as at_served_size  # a candidate of a smaller input: exported

            reference = at_served_size(args.artifacts / row["onnx"], args.artifacts / row["weights"],
                                       read_info(model_file).image_size, args.artifacts / "shadow-references")
    reference = Path(reference)
    if not reference.is_file():
        raise InputFileError(f"shadow reference {reference} is missing")
    if read_info(reference).image_size != read_info(model_file).image_size:
        raise tc.ConfigError(f"the shadow reference {reference} takes {read_info(reference).image_size}, the served "
                             f"model {read_info(model_file).image_size}: they must see the same tensor")
    try:
        data_yaml = Manifest(args.artifacts).output("dataset", "data_yaml")
    except InputFileError:
        print("note: no val split in the artifacts to measure the shadow baseline on: the alarms that compare "
              "with the gate's values stay silent (no yolo_gate_* gauges)")
        return reference, None
    return reference, shadow_baseline(reference, model_file, data_yaml, conf, iou, candidate_runtime=served_runtime)


if __name__ == "__main__":
    main()
