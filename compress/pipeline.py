"""Run the compression pipeline's stages in order, reusing the ones that are up to date.

    python -m compress.pipeline                      # every stage, default profile
    python -m compress.pipeline --stages export      # one stage (its inputs must exist)
    python -m compress.pipeline --weights my.pt --data my/data.yaml
    python -m compress.pipeline --data my/data.yaml --epochs 100 --imgsz 416

Each stage reads artifacts, writes new ones under `--artifacts` and records itself in
`manifest.json` (inputs' hashes, settings, outputs, metrics).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from compress.dataset import DatasetSpec
from compress.errors import ToolkitError, WeakBaselineError, cli_entry
from compress.manifest import Manifest, file_hash
from compress.progress import stage as stage_banner


@dataclass
class Profile:
    """Sizes of the default run; `tiny` keeps CI and tests within minutes."""

    dataset: DatasetSpec = field(default_factory=DatasetSpec)
    # 20 epochs with Ultralytics' "auto" optimizer (AdamW at lr 0.00125 for 4 classes) left the
    # baseline at mAP50-95 0.65, still learning: 30 more epochs added 25 points, and the teacher
    # the students learn from was that weak model. 60 epochs at lr0 0.002: 0.92 in about as long.
    epochs: int = 60
    imgsz: int = 256
    model: str = "yolov8n.yaml"
    optimizer: str = "AdamW"
    lr0: float = 0.002
    prune_target: float = 2.5  # MACs reduction
    importance: str = "magnitude"
    prune_steps: int = 1
    distill_epochs: int = 30  # on the old 20-epoch default: 15 left the student 9.1 points behind, 30: 6.0
    # Weight of the neck-feature term in the distillation loss (the logit terms stay at 1). Measured on
    # the default (INT8 mAP50-95, seeds 0 / 1): the ReLU 2.5x student 0.9007 / 0.8974 with the feature
    # term at 1, 0.9126 / 0.9054 without it (0.9110 with no teacher, seed 0); the SiLU student 0.9168
    # at 1, 0.9163 without (no difference). Matching the features of a narrower, differently-activated
    # network costs accuracy here.
    kd_feature_weight: float = 0.0
    calibration: str = "percentile"
    calibration_images: int = 64
    max_auto_imgsz: int = 640  # user data without IMGSZ= or weights: the images' size, capped here
    min_baseline_map: float = 0.05  # mAP50-95 below this: the baseline learned nothing worth compressing
    quantize_stem: bool = False  # the first conv sees raw pixels; the report measures both choices
    # Further students, each pruned from the baseline, distilled and quantized like the main one:
    # "activation@MACs reduction". Their rows join the report's accuracy/latency front.
    variants: tuple[str, ...] = ("relu@2.5", "relu@3.5")
    # The served default: the fastest INT8 row on the accuracy/latency front that gives up at most
    # this many points of mAP50-95 against the equal-budget baseline; none within it -> the most
    # accurate INT8 row (lost accuracy is silent in production, lost speed is bought with replicas).
    max_map_drop: float = 1.0


PROFILES = {
    "default": Profile(),
    "tiny": Profile(dataset=DatasetSpec(train_images=160, val_images=40, image_size=128), epochs=30, imgsz=128,
                    optimizer="AdamW", lr0=0.004, prune_target=2.0, distill_epochs=10, calibration_images=16,
                    max_auto_imgsz=128, variants=("relu@2.0",)),
}


@dataclass
class Context:
    artifacts: Path
    profile: Profile
    data: Path | None = None  # user data.yaml; None -> generated
    weights: Path | None = None  # user .pt; None -> trained
    imgsz_override: int | None = None  # IMGSZ=
    allow_weak_baseline: bool = False
    manifest: Manifest = field(init=False)

    def __post_init__(self) -> None:
        self.artifacts = Path(self.artifacts)
        self.manifest = Manifest(self.artifacts)

    def data_yaml(self) -> Path:
        """The dataset stage's resolved yaml (absolute paths): what every later stage reads."""
        return self.manifest.output("dataset", "data_yaml")

    def data_hash(self) -> str:
        """Hash of the image and label files the dataset resolves to (not of the yaml text)."""
        return self.manifest.get("dataset").metrics["content_hash"]

    def imgsz(self) -> int:
        record = self.manifest.get("baseline")
        return int(record.settings["imgsz"]) if record else _baseline_imgsz(self)


@dataclass
class Stage:
    name: str
    inputs: Callable[[Context], dict[str, str]]
    settings: Callable[[Context], dict]
    run: Callable[[Context, Path], tuple[dict[str, Path], dict]]


# dataset ------------------------------------------------------------------------------------

def _dataset_run(ctx: Context, out: Path):
    from compress import data
    from compress.dataset import generate

    dataset = data.load(ctx.data if ctx.data else generate(out, ctx.profile.dataset))
    outputs = {"data_yaml": dataset.resolved_yaml(out / ("user_data.yaml" if ctx.data else "data.yaml")),
               **{f"{split}_images": dataset.write_image_list(split, out / f"{split}_images.txt")
                  for split in data.SPLITS}}
    counts = {f"{split}_images": len(dataset.split(split)) for split in data.SPLITS}
    print(f"    dataset: {dataset.source} -> {counts['train_images']} train / {counts['val_images']} val images, "
          f"{dataset.num_classes} classes", flush=True)
    return outputs, {"source": str(dataset.source), "content_hash": dataset.content_hash(), **counts,
                     "classes": dataset.num_classes}


def _user_data_hash(ctx: Context) -> dict:
    from compress import data

    return {"user_data": data.load(ctx.data).content_hash()} if ctx.data else {}


DATASET = Stage(
    "dataset",
    inputs=_user_data_hash,
    # "version": bumped when the stage's outputs change, so older records are not reused
    settings=lambda ctx: {"version": 2, "user_data": str(ctx.data.resolve()) if ctx.data else None,
                          **({} if ctx.data else asdict(ctx.profile.dataset))},
    run=_dataset_run,
)


# baseline -----------------------------------------------------------------------------------

def _baseline_settings(ctx: Context) -> dict:
    return {"weights": str(ctx.weights) if ctx.weights else None, "model": ctx.profile.model,
            "epochs": ctx.profile.epochs, "imgsz": _baseline_imgsz(ctx), "optimizer": ctx.profile.optimizer,
            "lr0": ctx.profile.lr0}


def _baseline_imgsz(ctx: Context) -> int:
    """IMGSZ=, else the size the given weights were trained at, else (user data) the images'
    own size capped by the profile, else (generated data) the profile's size."""
    if ctx.imgsz_override:
        return ctx.imgsz_override
    if ctx.weights:
        from compress import yolo

        return yolo.checkpoint_imgsz(yolo.load(ctx.weights), ctx.profile.imgsz)
    if ctx.data:
        from compress import data

        return data.suggest_imgsz(data.load(ctx.data_yaml()), ctx.profile.max_auto_imgsz)
    return ctx.profile.imgsz


def _baseline_run(ctx: Context, out: Path):
    import shutil

    from compress import yolo

    imgsz = _baseline_imgsz(ctx)
    if ctx.weights:
        source = ctx.weights
    else:
        source = yolo.train(ctx.data_yaml(), out / "runs",
                            yolo.TrainSettings(model=ctx.profile.model, epochs=ctx.profile.epochs, imgsz=imgsz,
                                               optimizer=ctx.profile.optimizer, lr0=ctx.profile.lr0))
    weights = out / "model.pt"
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, weights)
    model = yolo.load(weights)
    metrics = {**yolo.evaluate(model, ctx.data_yaml(), imgsz), **yolo.describe(model, imgsz)}
    return {"weights": weights}, metrics


BASELINE = Stage(
    "baseline",
    inputs=lambda ctx: {"data": ctx.data_hash(), **({"weights": file_hash(ctx.weights)} if ctx.weights else {})},
    settings=_baseline_settings,
    run=_baseline_run,
)


# export -------------------------------------------------------------------------------------

def _export(ctx: Context, weights: Path, out_path: Path, stage: str, pruning_ratio: float = 0.0) -> Path:
    from compress.export import export_raw_onnx

    return export_raw_onnx(weights, out_path, ctx.imgsz(), {
        "toolkit_stage": stage, "source_sha256": file_hash(weights), "pruning_ratio": round(pruning_ratio, 4),
        "baseline_sha256": file_hash(ctx.manifest.output("baseline", "weights"))})


def _export_run(ctx: Context, out: Path):
    from compress.export import graph_facts

    path = _export(ctx, ctx.manifest.output("baseline", "weights"), out / "baseline.onnx", "baseline")
    return {"onnx": path}, {"file_mb": _mb(path), **graph_facts(path)}


def _mb(path: Path) -> float:
    return round(path.stat().st_size / 1e6, 3)


EXPORT = Stage(
    "export",
    inputs=lambda ctx: {"weights": file_hash(ctx.manifest.output("baseline", "weights"))},
    settings=lambda ctx: {"imgsz": ctx.imgsz()},
    run=_export_run,
)


# prune --------------------------------------------------------------------------------------

def _prune_run(ctx: Context, out: Path):
    from compress import yolo
    from compress.prune import prune, save_checkpoint

    model = yolo.load(ctx.manifest.output("baseline", "weights")).model
    result = prune(model, ctx.imgsz(), ctx.profile.prune_target, ctx.profile.importance, ctx.profile.prune_steps,
                   progress=lambda trial, ratio, red: print(f"    search {trial}: ratio {ratio:.3f} -> {red:.2f}x"))
    weights = save_checkpoint(model, out / "model.pt", {"imgsz": ctx.imgsz(), "task": "detect"},
                              {"pruning": {"ratio": result.ratio, "macs_reduction": result.macs_reduction}})
    onnx_path = _export(ctx, weights, out / "pruned.onnx", "prune", result.ratio)
    return {"weights": weights, "onnx": onnx_path}, {
        "ratio": round(result.ratio, 4), "macs_reduction": round(result.macs_reduction, 3),
        "params": result.params, "params_kept": round(result.params / result.base_params, 3)}


PRUNE = Stage(
    "prune",
    inputs=lambda ctx: {"weights": file_hash(ctx.manifest.output("baseline", "weights"))},
    settings=lambda ctx: {"target_macs_reduction": ctx.profile.prune_target, "importance": ctx.profile.importance,
                          "steps": ctx.profile.prune_steps, "imgsz": ctx.imgsz(), "round_to": 8},
    run=_prune_run,
)


# distill ------------------------------------------------------------------------------------

def _student_settings(ctx: Context):
    """Distillation settings shared by the main student and the variants."""
    from compress.distill import DistillSettings

    return DistillSettings(epochs=ctx.profile.distill_epochs, imgsz=ctx.imgsz(),
                           feature_weight=ctx.profile.kd_feature_weight)


def _distill_run(ctx: Context, out: Path):
    from compress.distill import distill

    settings = _student_settings(ctx)
    weights = distill(ctx.manifest.output("prune", "weights"), ctx.manifest.output("baseline", "weights"),
                      ctx.data_yaml(), out, settings)
    ratio = ctx.manifest.get("prune").metrics["ratio"]
    onnx_path = _export(ctx, weights, out / "distilled.onnx", "distill", ratio)
    return {"weights": weights, "onnx": onnx_path}, {"epochs": settings.epochs}


DISTILL = Stage(
    "distill",
    inputs=lambda ctx: {"student": file_hash(ctx.manifest.output("prune", "weights")),
                        "teacher": file_hash(ctx.manifest.output("baseline", "weights")),
                        "data": ctx.data_hash()},
    settings=lambda ctx: {"epochs": ctx.profile.distill_epochs, "imgsz": ctx.imgsz(),
                          "feature_weight": ctx.profile.kd_feature_weight},
    run=_distill_run,
)


# finetune: the equal-budget baseline ------------------------------------------------------------

def _finetune_run(ctx: Context, out: Path):
    """The unpruned baseline trained for the same extra epochs, data and schedule as distill,
    without a teacher: the fair reference for what compression costs (more epochs alone
    would otherwise count as a compression gain)."""
    from compress.distill import DistillSettings, distill

    settings = DistillSettings(epochs=ctx.profile.distill_epochs, imgsz=ctx.imgsz())
    baseline = ctx.manifest.output("baseline", "weights")
    weights = distill(baseline, None, ctx.data_yaml(), out, settings)
    onnx_path = _export(ctx, weights, out / "finetuned.onnx", "finetune")
    return {"weights": weights, "onnx": onnx_path}, {"epochs": settings.epochs}


FINETUNE = Stage(
    "finetune",
    inputs=lambda ctx: {"weights": file_hash(ctx.manifest.output("baseline", "weights")), "data": ctx.data_hash()},
    settings=lambda ctx: {"epochs": ctx.profile.distill_epochs, "imgsz": ctx.imgsz(), "teacher": None},
    run=_finetune_run,
)


# quantize -----------------------------------------------------------------------------------

def _quantize_run(ctx: Context, out: Path):
    from compress.quantize import qdq_summary, quantize

    source = ctx.manifest.output("distill", "onnx")
    size = (ctx.imgsz(), ctx.imgsz())
    common = dict(method=ctx.profile.calibration, calibration_count=ctx.profile.calibration_images)
    stem_float = not ctx.profile.quantize_stem
    info = quantize(source, out / "int8.onnx", ctx.data_yaml(), size, activation="uint8",
                    keep_stem_float=stem_float, **common)
    quantize(source, out / "int8_trt.onnx", ctx.data_yaml(), size, activation="int8", keep_stem_float=stem_float,
             **common)
    # The other stem choice, measured beside the served one in the report (not served).
    other = quantize(source, out / "int8_other_stem.onnx", ctx.data_yaml(), size, activation="uint8",
                     keep_stem_float=not stem_float, **common)
    summary = qdq_summary(out / "int8.onnx")
    return {"onnx": out / "int8.onnx", "trt_onnx": out / "int8_trt.onnx", "other_stem_onnx": out / "int8_other_stem.onnx"}, {
        **info, "quantized_convs": len(summary["quantized_convs"]), "float_convs": summary["float_convs"],
        "other_stem_float_nodes": other["float_nodes"], "file_mb": _mb(out / "int8.onnx")}


QUANTIZE = Stage(
    "quantize",
    inputs=lambda ctx: {"onnx": file_hash(ctx.manifest.output("distill", "onnx")), "data": ctx.data_hash()},
    settings=lambda ctx: {"calibration": ctx.profile.calibration, "images": ctx.profile.calibration_images,
                          "per_channel": True, "quantize_stem": ctx.profile.quantize_stem},
    run=_quantize_run,
)


# variants: other students on the accuracy / latency front ---------------------------------------

def parse_variant(spec: str) -> tuple[str, float, str]:
    """"relu@2.5" -> ("relu", 2.5, "relu_2.5x")."""
    from compress.prune import ACTIVATIONS

    activation, _, target = spec.partition("@")
    try:
        reduction = float(target)
    except ValueError:
        raise ToolkitError(f"variant {spec!r} is not activation@MACs-reduction (e.g. relu@2.5)") from None
    if activation not in ACTIVATIONS or reduction < 1:
        raise ToolkitError(f"variant {spec!r}: activation one of {sorted(ACTIVATIONS)}, reduction >= 1")
    return activation, reduction, f"{activation}_{reduction:g}x"


def _variants_run(ctx: Context, out: Path):
    from compress import yolo
    from compress.distill import distill
    from compress.prune import prune, save_checkpoint, use_activation
    from compress.quantize import quantize

    teacher = ctx.manifest.output("baseline", "weights")
    size = (ctx.imgsz(), ctx.imgsz())
    outputs, metrics = {}, {}
    for spec in ctx.profile.variants:
        activation, reduction, name = parse_variant(spec)
        folder = out / name
        print(f"    variant {name}: prune to {reduction:g}x fewer MACs, {activation}, distill, INT8", flush=True)
        model = yolo.load(teacher).model
        result = prune(model, ctx.imgsz(), reduction, ctx.profile.importance, ctx.profile.prune_steps)
        swapped = use_activation(model, activation)
        student = save_checkpoint(model, folder / "student.pt", {"imgsz": ctx.imgsz(), "task": "detect"},
                                  {"pruning": {"ratio": result.ratio, "macs_reduction": result.macs_reduction}})
        settings = _student_settings(ctx)
        weights = distill(student, teacher, ctx.data_yaml(), folder, settings)
        fp32 = _export(ctx, weights, folder / "fp32.onnx", f"variants:{name}", result.ratio)
        quantization = quantize(fp32, folder / "int8.onnx", ctx.data_yaml(), size, method=ctx.profile.calibration,
                                calibration_count=ctx.profile.calibration_images, activation="uint8",
                                keep_stem_float=not ctx.profile.quantize_stem)
        outputs.update({f"{name}_weights": weights, f"{name}_fp32": fp32, f"{name}_int8": folder / "int8.onnx"})
        metrics[name] = {"activation": activation, "swapped_activations": swapped, "target": reduction,
                         "ratio": round(result.ratio, 4), "macs_reduction": round(result.macs_reduction, 3),
                         "quantization": quantization}
    return outputs, metrics


VARIANTS = Stage(
    "variants",
    inputs=lambda ctx: {"teacher": file_hash(ctx.manifest.output("baseline", "weights")), "data": ctx.data_hash()},
    settings=lambda ctx: {"variants": list(ctx.profile.variants), "epochs": ctx.profile.distill_epochs,
                          "feature_weight": ctx.profile.kd_feature_weight,
                          "imgsz": ctx.imgsz(), "importance": ctx.profile.importance,
                          "calibration": ctx.profile.calibration, "images": ctx.profile.calibration_images,
                          "quantize_stem": ctx.profile.quantize_stem},
    run=_variants_run,
)


# plan ---------------------------------------------------------------------------------------

def _plan_run(ctx: Context, out: Path):
    from compress.plan import NO_TENSORRT, build_plan, tensorrt_version

    if tensorrt_version() is None:
        print(f"    plan: skipped: {NO_TENSORRT}")
        return {}, {"skipped": NO_TENSORRT}
    size = (ctx.imgsz(), ctx.imgsz())
    cache = out / "timing.cache"
    int8 = build_plan(ctx.manifest.output("quantize", "trt_onnx"), out / "int8.plan", "int8", size, timing_cache=cache)
    fp16 = build_plan(ctx.manifest.output("distill", "onnx"), out / "fp16.plan", "fp16", size, timing_cache=cache)
    return {"int8_plan": out / "int8.plan", "fp16_plan": out / "fp16.plan", "timing_cache": cache}, {
        "int8": int8, "fp16": fp16}


def _plan_settings(ctx: Context) -> dict:
    from compress.plan import tensorrt_version

    return {"tensorrt": tensorrt_version(), "imgsz": ctx.imgsz()}


PLAN = Stage(
    "plan",
    inputs=lambda ctx: {"int8": file_hash(ctx.manifest.output("quantize", "trt_onnx")),
                        "fp32": file_hash(ctx.manifest.output("distill", "onnx"))},
    settings=_plan_settings,
    run=_plan_run,
)


# report -------------------------------------------------------------------------------------

REPORTED = ("export", "finetune", "prune", "distill", "quantize")


def _report_run(ctx: Context, out: Path):
    from compress.report import write_report

    paths = write_report(ctx, out)
    return paths, {"targets_met": json.loads(paths["json"].read_text())["targets"]["all_met"]}


def _report_inputs(ctx: Context) -> dict[str, str]:
    inputs = {s: file_hash(ctx.manifest.output(s, "onnx")) for s in REPORTED}
    variants = ctx.manifest.get("variants")
    for key in sorted(variants.outputs if variants else []):
        if key.endswith("_int8"):
            inputs[f"variants:{key}"] = file_hash(ctx.manifest.output("variants", key))
    return inputs


REPORT = Stage(
    "report",
    inputs=_report_inputs,
    settings=lambda ctx: {"max_map_drop": ctx.profile.max_map_drop},  # threads, batch sizes: in the report
    run=_report_run,
)


STAGES = [DATASET, BASELINE, EXPORT, PRUNE, DISTILL, FINETUNE, QUANTIZE, VARIANTS, PLAN, REPORT]
STAGE_NAMES = [s.name for s in STAGES]


def check_baseline(ctx: Context, metrics: dict) -> None:
    """Stop before compressing a baseline that learned (next to) nothing."""
    score, floor = metrics.get("map50_95", 0.0), ctx.profile.min_baseline_map
    if score >= floor:
        return
    what = f"the given WEIGHTS={ctx.weights}" if ctx.weights else f"the baseline trained for {ctx.profile.epochs} epochs"
    message = (f"{what} scores mAP50-95 {score:.4f} on the val split, below the floor of {floor}: "
               "compressing it would measure noise")
    if ctx.allow_weak_baseline:
        print(f"    WARNING: {message}; going on because the floor was overridden", flush=True)
        return
    raise WeakBaselineError(message, hint="train longer (EPOCHS=), bring trained weights (WEIGHTS=), check the "
                                          "labels, or override with ALLOW_WEAK_BASELINE=1 / MIN_BASELINE_MAP=")


def run_stages(ctx: Context, names: list[str] | None = None, force: bool = False) -> dict:
    """Run `names` (default: all) in pipeline order; returns {stage: metrics}."""
    selected = [s for s in STAGES if names is None or s.name in names]
    results = {}
    for index, stage in enumerate(selected):
        inputs, settings = stage.inputs(ctx), stage.settings(ctx)
        if not force and ctx.manifest.is_current(stage.name, inputs, settings):
            print(f"--- {stage.name}: up to date, reusing {ctx.artifacts / stage.name}", flush=True)
            results[stage.name] = ctx.manifest.get(stage.name).metrics
        else:
            with stage_banner(f"stage {stage.name}"):
                start = time.perf_counter()
                outputs, metrics = stage.run(ctx, ctx.artifacts / stage.name)
                ctx.manifest.record(stage.name, inputs, settings, outputs, metrics, time.perf_counter() - start)
            print(f"    {stage.name}: {metrics}", flush=True)
            results[stage.name] = metrics
        if stage is BASELINE and index + 1 < len(selected):
            check_baseline(ctx, results[stage.name])
    return results


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--profile", choices=sorted(PROFILES), default="default")
    parser.add_argument("--data", type=Path, help="an Ultralytics data.yaml (default: generated)")
    parser.add_argument("--weights", type=Path, help="an Ultralytics detect .pt (default: trained here)")
    parser.add_argument("--epochs", type=int, help="override the profile's training epochs")
    parser.add_argument("--prune-target", type=float, help="MACs reduction the prune stage aims for (e.g. 2.5)")
    parser.add_argument("--importance", choices=["magnitude", "bn_scale", "lamp"], help="pruning importance criterion")
    parser.add_argument("--prune-steps", type=int, help="iterative pruning steps")
    parser.add_argument("--distill-epochs", type=int)
    parser.add_argument("--kd-feature-weight", type=float,
                        help="weight of the neck-feature distillation term (default 0: logit terms only)")
    parser.add_argument("--calibration", choices=["minmax", "entropy", "percentile"])
    parser.add_argument("--calibration-images", type=int)
    parser.add_argument("--variants", nargs="*", metavar="ACT@X",
                        help="further students on the accuracy/latency front, e.g. relu@2.5 silu@3.5 (none: skip)")
    parser.add_argument("--quantize-stem", action="store_true", default=None,
                        help="quantize the first conv too (default: keep it float; the report shows both)")
    parser.add_argument("--imgsz", type=int, help="training/serving image size (default: the weights' own, else "
                                                  "the images' size for user data, else the profile's)")
    parser.add_argument("--max-map-drop", type=float,
                        help="mAP50-95 points the served default may give up for speed (default 1.0)")
    parser.add_argument("--min-baseline-map", type=float, help="stop when the baseline's mAP50-95 is below this")
    parser.add_argument("--allow-weak-baseline", action="store_true", help="go on (with a warning) below the floor")
    parser.add_argument("--stages", nargs="+", choices=STAGE_NAMES, help="run only these stages")
    parser.add_argument("--force", action="store_true", help="re-run even if up to date")
    args = parser.parse_args(argv)
    profile = PROFILES[args.profile]
    overrides = {"epochs": args.epochs, "prune_target": args.prune_target, "importance": args.importance,
                 "prune_steps": args.prune_steps, "distill_epochs": args.distill_epochs,
                 "kd_feature_weight": args.kd_feature_weight,
                 "calibration": args.calibration, "calibration_images": args.calibration_images,
                 "min_baseline_map": args.min_baseline_map, "max_map_drop": args.max_map_drop, "quantize_stem": args.quantize_stem,
                 "variants": tuple(args.variants) if args.variants is not None else None}
    profile = replace(profile, **{k: v for k, v in overrides.items() if v is not None})
    for path, what in ((args.data, "DATA"), (args.weights, "WEIGHTS")):
        if path is not None and not path.exists():
            raise ToolkitError(f"{what}={path} does not exist")
    if profile.kd_feature_weight < 0:
        raise ToolkitError(f"KD_FEATURE_WEIGHT={profile.kd_feature_weight} is negative (0 turns the feature term off)")
    if args.imgsz is not None and (args.imgsz < 32 or args.imgsz % 32):
        raise ToolkitError(f"IMGSZ={args.imgsz} is not a positive multiple of 32 (the detector's largest stride)")
    ctx = Context(args.artifacts, profile, data=args.data, weights=args.weights, imgsz_override=args.imgsz,
                  allow_weak_baseline=args.allow_weak_baseline)
    run_stages(ctx, args.stages, force=args.force)


if __name__ == "__main__":
    main()
