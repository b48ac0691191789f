"""Run the compression pipeline's stages in order, reusing the ones that are up to date.

    python -m compress.pipeline                      # every stage, default profile
    python -m compress.pipeline --stages export      # one stage (its inputs must exist)
    python -m compress.pipeline --weights my.pt --data my/data.yaml

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
from compress.manifest import Manifest, file_hash
from tools.errors import ToolkitError, cli_entry
from tools.progress import stage as stage_banner


@dataclass
class Profile:
    """Sizes of the default run; `tiny` keeps CI and tests within minutes."""

    dataset: DatasetSpec = field(default_factory=DatasetSpec)
    epochs: int = 20
    imgsz: int = 256
    model: str = "yolov8n.yaml"
    optimizer: str = "auto"
    lr0: float = 0.01
    prune_target: float = 2.5  # MACs reduction
    importance: str = "magnitude"
    prune_steps: int = 1
    distill_epochs: int = 15
    calibration: str = "percentile"
    calibration_images: int = 64


PROFILES = {
    "default": Profile(),
    "tiny": Profile(dataset=DatasetSpec(train_images=160, val_images=40, image_size=128), epochs=30, imgsz=128,
                    optimizer="AdamW", lr0=0.004, prune_target=2.0, distill_epochs=10, calibration_images=16),
}


@dataclass
class Context:
    artifacts: Path
    profile: Profile
    data: Path | None = None  # user data.yaml; None -> generated
    weights: Path | None = None  # user .pt; None -> trained
    manifest: Manifest = field(init=False)

    def __post_init__(self) -> None:
        self.artifacts = Path(self.artifacts)
        self.manifest = Manifest(self.artifacts)

    def data_yaml(self) -> Path:
        return self.data if self.data else self.manifest.output("dataset", "data_yaml")

    def imgsz(self) -> int:
        record = self.manifest.get("baseline")
        return int(record.settings["imgsz"]) if record else self.profile.imgsz


@dataclass
class Stage:
    name: str
    inputs: Callable[[Context], dict[str, str]]
    settings: Callable[[Context], dict]
    run: Callable[[Context, Path], tuple[dict[str, Path], dict]]


# dataset ------------------------------------------------------------------------------------

def _dataset_run(ctx: Context, out: Path):
    from compress.dataset import generate

    if ctx.data:
        return {"data_yaml": ctx.data.resolve()}, {"source": "user"}
    data_yaml = generate(out, ctx.profile.dataset)
    spec = ctx.profile.dataset
    return {"data_yaml": data_yaml}, {"train_images": spec.train_images, "val_images": spec.val_images}


DATASET = Stage(
    "dataset",
    inputs=lambda ctx: {"user_data": file_hash(ctx.data)} if ctx.data else {},
    settings=lambda ctx: {"user_data": str(ctx.data) if ctx.data else None, **asdict(ctx.profile.dataset)},
    run=_dataset_run,
)


# baseline -----------------------------------------------------------------------------------

def _baseline_settings(ctx: Context) -> dict:
    return {"weights": str(ctx.weights) if ctx.weights else None, "model": ctx.profile.model,
            "epochs": ctx.profile.epochs, "imgsz": _baseline_imgsz(ctx), "optimizer": ctx.profile.optimizer,
            "lr0": ctx.profile.lr0}


def _baseline_imgsz(ctx: Context) -> int:
    if not ctx.weights:
        return ctx.profile.imgsz
    from compress import yolo

    return yolo.checkpoint_imgsz(yolo.load(ctx.weights), ctx.profile.imgsz)


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
    inputs=lambda ctx: {"data": file_hash(ctx.data_yaml()),
                        **({"weights": file_hash(ctx.weights)} if ctx.weights else {})},
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
    path = _export(ctx, ctx.manifest.output("baseline", "weights"), out / "baseline.onnx", "baseline")
    return {"onnx": path}, {"file_mb": _mb(path)}


def _mb(path: Path) -> float:
    return round(path.stat().st_size / 1e6, 3)


EXPORT = Stage(
    "export",
    inputs=lambda ctx: {"weights": file_hash(ctx.manifest.output("baseline", "weights"))},
    settings=lambda ctx: {"imgsz": ctx.imgsz(), "opset": 17, "dynamic": True, "head": "raw"},
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

def _distill_run(ctx: Context, out: Path):
    from compress.distill import DistillSettings, distill

    settings = DistillSettings(epochs=ctx.profile.distill_epochs, imgsz=ctx.imgsz())
    weights = distill(ctx.manifest.output("prune", "weights"), ctx.manifest.output("baseline", "weights"),
                      ctx.data_yaml(), out, settings)
    ratio = ctx.manifest.get("prune").metrics["ratio"]
    onnx_path = _export(ctx, weights, out / "distilled.onnx", "distill", ratio)
    return {"weights": weights, "onnx": onnx_path}, {"epochs": settings.epochs}


DISTILL = Stage(
    "distill",
    inputs=lambda ctx: {"student": file_hash(ctx.manifest.output("prune", "weights")),
                        "teacher": file_hash(ctx.manifest.output("baseline", "weights")),
                        "data": file_hash(ctx.data_yaml())},
    settings=lambda ctx: {"epochs": ctx.profile.distill_epochs, "imgsz": ctx.imgsz()},
    run=_distill_run,
)


# quantize -----------------------------------------------------------------------------------

def _quantize_run(ctx: Context, out: Path):
    from compress.quantize import qdq_summary, quantize

    source = ctx.manifest.output("distill", "onnx")
    size = (ctx.imgsz(), ctx.imgsz())
    common = dict(method=ctx.profile.calibration, calibration_count=ctx.profile.calibration_images)
    info = quantize(source, out / "int8.onnx", ctx.data_yaml(), size, activation="uint8", **common)
    quantize(source, out / "int8_trt.onnx", ctx.data_yaml(), size, activation="int8", **common)
    summary = qdq_summary(out / "int8.onnx")
    return {"onnx": out / "int8.onnx", "trt_onnx": out / "int8_trt.onnx"}, {
        **info, "quantized_convs": len(summary["quantized_convs"]), "float_convs": summary["float_convs"],
        "file_mb": _mb(out / "int8.onnx")}


QUANTIZE = Stage(
    "quantize",
    inputs=lambda ctx: {"onnx": file_hash(ctx.manifest.output("distill", "onnx")), "data": file_hash(ctx.data_yaml())},
    settings=lambda ctx: {"calibration": ctx.profile.calibration, "images": ctx.profile.calibration_images,
                          "per_channel": True, "float": ["stem", "head_outputs"]},
    run=_quantize_run,
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

    return {"tensorrt": tensorrt_version(), "max_batch": 16, "imgsz": ctx.imgsz()}


PLAN = Stage(
    "plan",
    inputs=lambda ctx: {"int8": file_hash(ctx.manifest.output("quantize", "trt_onnx")),
                        "fp32": file_hash(ctx.manifest.output("distill", "onnx"))},
    settings=_plan_settings,
    run=_plan_run,
)


# report -------------------------------------------------------------------------------------

REPORTED = ("export", "prune", "distill", "quantize")


def _report_run(ctx: Context, out: Path):
    from compress.report import write_report

    paths = write_report(ctx, out)
    return paths, {"targets_met": json.loads(paths["json"].read_text())["targets"]["all_met"]}


REPORT = Stage(
    "report",
    inputs=lambda ctx: {s: file_hash(ctx.manifest.output(s, "onnx")) for s in REPORTED},
    settings=lambda ctx: {"threads": 2, "batch_sizes": [1, 8]},
    run=_report_run,
)


STAGES = [DATASET, BASELINE, EXPORT, PRUNE, DISTILL, QUANTIZE, PLAN, REPORT]
SERVED_STAGE = "quantize"
STAGE_NAMES = [s.name for s in STAGES]


def run_stages(ctx: Context, names: list[str] | None = None, force: bool = False) -> dict:
    """Run `names` (default: all) in pipeline order; returns {stage: metrics}."""
    selected = [s for s in STAGES if names is None or s.name in names]
    results = {}
    for stage in selected:
        inputs, settings = stage.inputs(ctx), stage.settings(ctx)
        if not force and ctx.manifest.is_current(stage.name, inputs, settings):
            print(f"--- {stage.name}: up to date, reusing {ctx.artifacts / stage.name}", flush=True)
            results[stage.name] = ctx.manifest.get(stage.name).metrics
            continue
        with stage_banner(f"stage {stage.name}"):
            start = time.perf_counter()
            outputs, metrics = stage.run(ctx, ctx.artifacts / stage.name)
            ctx.manifest.record(stage.name, inputs, settings, outputs, metrics, time.perf_counter() - start)
        print(f"    {stage.name}: {metrics}", flush=True)
        results[stage.name] = metrics
    if "quantize" in ctx.manifest.records:
        (ctx.artifacts / "served.json").write_text(json.dumps({"stage": SERVED_STAGE}))
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
    parser.add_argument("--calibration", choices=["minmax", "entropy", "percentile"])
    parser.add_argument("--calibration-images", type=int)
    parser.add_argument("--stages", nargs="+", choices=STAGE_NAMES, help="run only these stages")
    parser.add_argument("--force", action="store_true", help="re-run even if up to date")
    args = parser.parse_args(argv)
    profile = PROFILES[args.profile]
    overrides = {"epochs": args.epochs, "prune_target": args.prune_target, "importance": args.importance,
                 "prune_steps": args.prune_steps, "distill_epochs": args.distill_epochs,
                 "calibration": args.calibration, "calibration_images": args.calibration_images}
    profile = replace(profile, **{k: v for k, v in overrides.items() if v is not None})
    for path, what in ((args.data, "DATA"), (args.weights, "WEIGHTS")):
        if path is not None and not path.exists():
            raise ToolkitError(f"{what}={path} does not exist")
    ctx = Context(args.artifacts, profile, data=args.data, weights=args.weights)
    run_stages(ctx, args.stages, force=args.force)


if __name__ == "__main__":
    main()
