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
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from compress.budget import FITS, OVER, REFERENCE_STAGES, Reference, choose_reference
from compress.dataset import DatasetSpec
from compress.defaults import DEFAULT_KD_FEATURE_WEIGHT, DEFAULT_MAX_BATCH_SIZE
from compress.errors import ToolkitError, UnsupportedModelError, WeakBaselineError, cli_entry
from compress.manifest import Manifest, file_hash
from compress.records import Report, SearchRecord
from compress.progress import stage as stage_banner


@dataclass
class Profile:
    """Sizes of the default run; `tiny` keeps CI and tests within minutes."""

    dataset: DatasetSpec = field(default_factory=DatasetSpec)
    # Long enough that the baseline has stopped learning: the students learn from it, and a
    # teacher still improving makes every student look worse than compression makes it.
    epochs: int = 60
    imgsz: int = 256
    model: str = "yolov8n.yaml"
    optimizer: str = "AdamW"
    lr0: float = 0.002
    importance: str = "magnitude"
    prune_steps: int = 1
    # Extra epochs for every student and for the equal-budget baseline: enough for a pruned
    # student to recover, the same for all so the comparison is fair.
    distill_epochs: int = 30
    # Weight of the neck-feature term in the distillation loss (the logit terms stay at 1): matching
    # the features of a narrower, differently-activated network cost the ReLU students accuracy.
    kd_feature_weight: float = DEFAULT_KD_FEATURE_WEIGHT
    calibration: str = "percentile"
    calibration_images: int = 64
    max_auto_imgsz: int = 640  # user data without IMGSZ= or weights: the images' size, capped here
    min_baseline_map: float = 0.05  # mAP50-95 below this: the baseline learned nothing worth compressing
    quantize_stem: bool = False  # the first conv sees raw pixels: kept float unless asked
    # The search space: students with these activations at these MACs reductions (ReLU also
    # unpruned), plus the INT8 of the equal-budget model. Steps of 0.25 up to 3x: the served depth
    # lands within one step of the deepest that fits.
    search_activations: tuple[str, ...] = ("relu", "silu")
    search_depths: tuple[float, ...] = (1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75, 3.0, 3.5)
    # Input sizes below the trained one the search also tries every candidate at (multiples of
    # the stride; each fine-tuned at its size): the work falls with the square of the scale.
    search_sizes: tuple[int, ...] = ()
    # Training time the search may spend: bounds the default `make` on a 2-core machine.
    search_minutes: float = 22.0
    # The served default is the fastest measured candidate within this many points of mAP50-95 of
    # the fair reference; never one outside it unless `allow_over_budget` (then: the most accurate
    # INT8 candidate when none fits, since FP32 is what the budget would otherwise serve).
    max_map_drop: float = 1.0
    allow_over_budget: bool = False


PROFILES = {
    "default": Profile(),
    "tiny": Profile(dataset=DatasetSpec(train_images=160, val_images=40, image_size=128), epochs=30, imgsz=128,
                    optimizer="AdamW", lr0=0.004, distill_epochs=10, calibration_images=16,
                    max_auto_imgsz=128, search_activations=("relu",), search_depths=(2.0,), search_minutes=10.0),
}


@dataclass
class Context:
    artifacts: Path
    profile: Profile
    data: Path | None = None  # user data.yaml; None -> generated
    weights: Path | None = None  # user .pt; None -> trained
    imgsz_override: int | None = None  # IMGSZ=
    allow_weak_baseline: bool = False
    # The target: where training runs (DEVICE=, default the GPU when torch sees one), the largest
    # batch the server forms (TensorRT profiles) and the threads latency is measured at (default:
    # what one served detector instance gets on this machine).
    device: str | None = None
    max_batch: int = DEFAULT_MAX_BATCH_SIZE
    threads: int | None = None
    manifest: Manifest = field(init=False)

    def __post_init__(self) -> None:
        self.artifacts = Path(self.artifacts)
        self.manifest = Manifest(self.artifacts)

    def training_device(self) -> str:
        from compress.env import training_device

        return training_device(self.device)

    def latency_threads(self) -> int:
        from compress.env import serving_threads

        return self.threads or serving_threads()

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
                                               optimizer=ctx.profile.optimizer, lr0=ctx.profile.lr0,
                                               device=ctx.training_device()))
    weights = out / "model.pt"
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, weights)
    model = yolo.load(weights)
    metrics = {**yolo.evaluate(model, ctx.data_yaml(), imgsz, device=ctx.training_device()),
               **yolo.describe(model, imgsz), "device": ctx.training_device()}
    return {"weights": weights}, metrics


BASELINE = Stage(
    "baseline",
    inputs=lambda ctx: {"data": ctx.data_hash(), **({"weights": file_hash(ctx.weights)} if ctx.weights else {})},
    settings=_baseline_settings,
    run=_baseline_run,
)


# export -------------------------------------------------------------------------------------

def _export_run(ctx: Context, out: Path):
    from compress.export import graph_facts

    from compress.candidates import export_onnx

    path = export_onnx(ctx, ctx.manifest.output("baseline", "weights"), out / "baseline.onnx", "baseline")
    return {"onnx": path}, {"file_mb": _mb(path), **graph_facts(path)}


def _mb(path: Path) -> float:
    return round(path.stat().st_size / 1e6, 3)


EXPORT = Stage(
    "export",
    inputs=lambda ctx: {"weights": file_hash(ctx.manifest.output("baseline", "weights"))},
    settings=lambda ctx: {"imgsz": ctx.imgsz()},
    run=_export_run,
)


# finetune: the equal-budget baseline ------------------------------------------------------------

def _finetune_run(ctx: Context, out: Path):
    """The unpruned baseline trained for the same extra epochs, data and schedule as the students,
    without a teacher: the fair reference for what compression costs (more epochs alone would
    otherwise count as a compression gain)."""
    from compress.candidates import export_onnx
    from compress.distill import DistillSettings, distill

    settings = DistillSettings(epochs=ctx.profile.distill_epochs, imgsz=ctx.imgsz())
    baseline = ctx.manifest.output("baseline", "weights")
    weights = distill(baseline, None, ctx.data_yaml(), out, settings, device=ctx.training_device())
    onnx_path = export_onnx(ctx, weights, out / "finetuned.onnx", "finetune")
    return {"weights": weights, "onnx": onnx_path}, {"epochs": settings.epochs, "device": ctx.training_device()}


FINETUNE = Stage(
    "finetune",
    inputs=lambda ctx: {"weights": file_hash(ctx.manifest.output("baseline", "weights")), "data": ctx.data_hash()},
    settings=lambda ctx: {"epochs": ctx.profile.distill_epochs, "imgsz": ctx.imgsz(), "teacher": None},
    run=_finetune_run,
)


# search: the fastest candidate within the accuracy budget ----------------------------------------

def _reference(ctx: Context) -> Reference:
    """The fair reference, chosen once here and recorded: everyone after reads it from the search record."""
    from compress.evaluate import evaluate_onnx

    return choose_reference({stage: evaluate_onnx(ctx.manifest.output(stage, "onnx"), ctx.data_yaml())
                             for stage in REFERENCE_STAGES})


def _search_run(ctx: Context, out: Path):
    from compress.benchmark import measure_in_subprocess
    from compress.candidates import CandidateStore, search_space
    from compress.progress import progress
    from compress.search import Probe, run_search

    reference = _reference(ctx)
    store = CandidateStore(ctx, reference)
    specs = {spec.name: spec for spec in search_space(ctx.profile.search_activations, ctx.profile.search_depths,
                                                      smaller_sizes(ctx))}
    print(f"    search: {len(specs)} candidates; timing their INT8 architectures before training any", flush=True)
    architectures, impossible = {}, {}
    for name, spec in progress(specs.items(), desc="architectures"):
        try:
            architectures[name] = store.architecture(spec)
        except UnsupportedModelError as error:  # e.g. channel rounding cannot reach this depth on a small model
            impossible[name] = str(error)
            print(f"    search: {name}: not possible: {error}", flush=True)
    # (each at its own input size: the files say which)
    latency = measure_in_subprocess({name: arch.path("int8") for name, arch in architectures.items()},
                                    (ctx.imgsz(), ctx.imgsz()), threads=ctx.latency_threads(),
                                    rounds=ARCHITECTURE_ROUNDS)
    probes = [Probe(name, spec.activation, spec.depth, spec.trained, latency[name]["bs1_ms"], latency[name]["bs8_ms"],
                    imgsz=spec.imgsz)
              for name, spec in specs.items() if name in architectures]
    finetune_seconds = ctx.manifest.get("finetune").seconds
    base_gmacs = architectures[next(n for n, s in specs.items() if not s.trained and s.imgsz is None)].metrics["gmacs"]
    observed: list[float] = []  # actual / first-guess training time of the candidates trained so far

    def first_guess(probe: Probe) -> float:
        # Training time grows with the student's MACs but not to zero (data loading, the teacher's
        # forward pass): the equal-budget fine-tune's time scaled.
        share = architectures[probe.name].metrics["gmacs"] / base_gmacs
        return finetune_seconds * TEACHER_OVERHEAD * max(share, MIN_TRAINING_SHARE)

    def estimate_seconds(probe: Probe) -> float:
        spec = specs[probe.name]
        if not spec.trained or store.cached(spec):
            return 0.0
        return first_guess(probe) * (sum(observed) / len(observed) if observed else 1.0)  # corrected by what training took

    made: dict = {}
    fresh: set[str] = set()  # trained (or quantized) in this run rather than reused

    def train_and_evaluate(probe: Probe) -> float:
        spec = specs[probe.name]
        trained = store.cached(spec) is None
        made[probe.name] = store.make(spec)
        if trained:
            fresh.add(probe.name)
        if trained and spec.trained:
            observed.append(made[probe.name].metrics["train_seconds"] / first_guess(probe))
        return made[probe.name].metrics["int8_map"]["map50_95"]

    result = run_search(probes, train_and_evaluate, reference.map50_95, ctx.profile.max_map_drop,
                        ctx.profile.search_minutes * 60, estimate_seconds)
    # Nothing fits and INT8 alone broke the unpruned reference's budget (its FP32 model is the
    # reference itself): keep its most sensitive convs in float before falling back to FP32.
    unpruned = next(p for p in probes if not p.trained and p.imgsz is None)
    if not result.fitting() and unpruned.status == OVER:
        rescued, trials = store.rescue(specs[unpruned.name], ctx.profile.max_map_drop)
        if rescued:
            made[rescued.name] = rescued
            if trials[-1].detail["created"]:
                fresh.add(rescued.name)
            drop = trials[-1].detail["drop_points"]
            probes.append(Probe(rescued.name, unpruned.activation, 1.0, False, unpruned.bs1_ms, unpruned.bs8_ms,
                                status=FITS, map50_95=rescued.metrics["int8_map"]["map50_95"],
                                drop_points=drop, order=len([p for p in probes if p.order is not None]),
                                note="mixed precision"))
    # Candidates measured for this teacher and data under earlier budgets join the report too (no
    # training): the budget table then shows the whole measured trade-off, not only this run's probes.
    for name, spec in specs.items():
        if name not in made and name in architectures:
            record = store.cached(spec)
            if record:
                made[name] = record
    outputs = {f"{name}_{kind}": path for name, record in made.items() for kind, path in record.files().items()}
    metrics = {"reference": reference.as_dict(), "budget_points": ctx.profile.max_map_drop,
               "seconds_limit": result.seconds_limit, "seconds_spent": result.seconds_spent,
               "probes": [p.as_dict() for p in probes], "log": result.log, "not_possible": impossible,
               "candidates": {name: SearchRecord.candidate_entry({**record.metrics, "reused": name not in fresh},
                                                                 record.files(), ctx.artifacts)
                              for name, record in made.items()},
               "architectures": {name: arch.metrics for name, arch in architectures.items()}}
    return outputs, metrics


# Timing an untrained architecture only ranks candidates: the report measures the trained ones.
ARCHITECTURE_ROUNDS = {1: 20, 8: 6}
# A student's training also runs the teacher's forward pass and the distillation loss.
TEACHER_OVERHEAD = 1.3
MIN_TRAINING_SHARE = 0.5


def smaller_sizes(ctx: Context) -> tuple[int, ...]:
    """SEARCH_SIZES below the trained size, largest first (the trained size itself is always
    searched); one above it is refused: the model never learned from that much detail."""
    trained = ctx.imgsz()
    larger = [size for size in ctx.profile.search_sizes if size > trained]
    if larger:
        raise ToolkitError(f"SEARCH_SIZES={' '.join(map(str, ctx.profile.search_sizes))}: {larger} above the "
                           f"trained size {trained}", hint="list input sizes at or below the size the model was "
                                                            "trained at (IMGSZ= trains at another)")
    return tuple(sorted({size for size in ctx.profile.search_sizes if size < trained}, reverse=True))


def _search_settings(ctx: Context) -> dict:
    p = ctx.profile
    # "version": bumped when the search's decisions or records change, so older ones are not reused
    return {"version": 6, "threads": ctx.latency_threads(), "max_map_drop": p.max_map_drop,
            "activations": list(p.search_activations), "sizes": list(smaller_sizes(ctx)),
            "depths": list(p.search_depths), "minutes": p.search_minutes, "epochs": p.distill_epochs,
            "feature_weight": p.kd_feature_weight, "imgsz": ctx.imgsz(), "importance": p.importance,
            "calibration": p.calibration, "images": p.calibration_images, "quantize_stem": p.quantize_stem}


SEARCH = Stage(
    "search",
    inputs=lambda ctx: {"teacher": file_hash(ctx.manifest.output("baseline", "weights")), "data": ctx.data_hash(),
                        "equal_budget": file_hash(ctx.manifest.output("finetune", "onnx"))},
    settings=_search_settings,
    run=_search_run,
)


# plan ---------------------------------------------------------------------------------------

def _plan_run(ctx: Context, out: Path):
    from compress.plan import NO_TENSORRT, build_plan, tensorrt_version
    from compress.quantize import quantize

    if tensorrt_version() is None:
        print(f"    plan: skipped: {NO_TENSORRT}")
        return {}, {"skipped": NO_TENSORRT}
    served, cache = Report.load(ctx.artifacts).served, out / "timing.cache"
    size = served.image_size
    outputs, metrics = {"timing_cache": cache}, {"served": served.name}
    if served.precision == "int8":
        q = served.quantization
        trt_onnx = out / "int8_trt.onnx"
        quantize(served.fp32_onnx, trt_onnx, ctx.data_yaml(), size, method=q["calibration"],
                 calibration_count=q["calibration_images"], float_nodes=q["float_nodes"],
                 keep_stem_float=q["stem_float"], activation="int8")
        metrics["int8"] = build_plan(trt_onnx, out / "int8.plan", "int8", size, max_batch=ctx.max_batch,
                                     timing_cache=cache)
        outputs.update(trt_onnx=trt_onnx, int8_plan=out / "int8.plan")
    metrics["fp16"] = build_plan(served.fp32_onnx, out / "fp16.plan", "fp16", size, max_batch=ctx.max_batch,
                                 timing_cache=cache, work_dir=out)
    outputs["fp16_plan"] = out / "fp16.plan"
    return outputs, metrics


def _plan_settings(ctx: Context) -> dict:
    from compress.plan import tensorrt_version

    # (the served file's size is its own: its hash is among the inputs)
    return {"tensorrt": tensorrt_version(), "max_batch": ctx.max_batch}


def _plan_inputs(ctx: Context) -> dict:
    served = Report.load(ctx.artifacts).served
    return {"served": file_hash(served.onnx), "fp32": file_hash(served.fp32_onnx)}


PLAN = Stage("plan", inputs=_plan_inputs, settings=_plan_settings, run=_plan_run)


# report -------------------------------------------------------------------------------------

def _report_run(ctx: Context, out: Path):
    from compress.report import write_report

    paths = write_report(ctx, out)
    return paths, {"targets_met": Report.load(ctx.artifacts).data["targets"]["all_met"]}


def _report_inputs(ctx: Context) -> dict[str, str]:
    from compress.records import GateVerdicts

    inputs = {s: file_hash(ctx.manifest.output(s, "onnx")) for s in REFERENCE_STAGES}
    if ctx.manifest.get("search"):
        for name, candidate in sorted(SearchRecord.load(ctx.manifest).candidates.items()):
            inputs.update({f"search:{name}:{kind}": file_hash(candidate.files[kind]) for kind in ("fp32", "int8")})
    verdicts = GateVerdicts.path(ctx.artifacts)
    if verdicts.exists():  # candidates the gate refused are not served; its variants are measured
        inputs["gate_verdicts"] = file_hash(verdicts)
    return inputs


def _report_settings(ctx: Context) -> dict:
    return {"version": 3, "max_map_drop": ctx.profile.max_map_drop, "allow_over_budget": ctx.profile.allow_over_budget,
            "threads": ctx.latency_threads()}


REPORT = Stage("report", inputs=_report_inputs, settings=_report_settings, run=_report_run)


STAGES = [DATASET, BASELINE, EXPORT, FINETUNE, SEARCH, REPORT, PLAN]
STAGE_NAMES = [s.name for s in STAGES]


def remeasure_report(artifacts: Path, report: dict) -> dict:
    """The report stage again, under the budget and threads `report` (the current report.json) was
    measured with: after the parity gate refused a candidate or made a float-kept variant."""
    served = report["served"]
    profile = replace(PROFILES["default"], max_map_drop=served["budget_points"],
                      allow_over_budget=served["allow_over_budget"])
    return run_stages(Context(artifacts, profile, threads=report["threads"]), ["report"], force=True)


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


def metrics_line(metrics: dict) -> str:
    """A stage's scalar metrics; the names of the rest, which manifest.json holds (the search's
    are tens of kilobytes: every probe and candidate)."""
    scalars = {k: v for k, v in metrics.items() if v is None or isinstance(v, (bool, int, float, str))}
    rest = [k for k in metrics if k not in scalars]
    return f"{scalars}" + (f" (and {', '.join(rest)}: in manifest.json)" if rest else "")


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
            print(f"    {stage.name}: {metrics_line(metrics)}", flush=True)
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
    parser.add_argument("--importance", choices=["magnitude", "bn_scale", "lamp"], help="pruning importance criterion")
    parser.add_argument("--prune-steps", type=int, help="torch-pruning steps, run back to back with no training between them")
    parser.add_argument("--distill-epochs", type=int)
    parser.add_argument("--kd-feature-weight", type=float,
                        help="weight of the neck-feature distillation term (default 0: logit terms only)")
    parser.add_argument("--calibration", choices=["minmax", "entropy", "percentile"])
    parser.add_argument("--calibration-images", type=int)
    parser.add_argument("--search-depths", type=float, nargs="+", metavar="X",
                        help="MACs reductions the search may prune to (e.g. 1.5 2 2.5 3)")
    parser.add_argument("--search-activations", nargs="+", choices=["relu", "silu"],
                        help="student activations the search tries (default: relu silu)")
    parser.add_argument("--search-sizes", type=int, nargs="+", metavar="PX",
                        help="input sizes below the trained one to search every candidate at too (multiples of 32, "
                             "e.g. 224 192)")
    parser.add_argument("--search-minutes", type=float, help="training time the search may spend (default 22)")
    parser.add_argument("--quantize-stem", action="store_true", default=None,
                        help="quantize the first conv too (default: keep it float)")
    parser.add_argument("--imgsz", type=int, help="training/serving image size (default: the weights' own, else "
                                                  "the images' size for user data, else the profile's)")
    parser.add_argument("--max-map-drop", type=float,
                        help="mAP50-95 points the served model may give up for speed (default 1.0)")
    parser.add_argument("--allow-over-budget", action="store_true", default=None,
                        help="when no INT8 candidate fits the budget, serve the most accurate one instead of FP32")
    parser.add_argument("--min-baseline-map", type=float, help="stop when the baseline's mAP50-95 is below this")
    parser.add_argument("--allow-weak-baseline", action="store_true", help="go on (with a warning) below the floor")
    parser.add_argument("--device", help="where training and validation run: cpu, gpu or a CUDA index "
                                         "(default: the GPU when torch sees one, else the CPU)")
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH_SIZE,
                        help="the largest batch the server forms: the TensorRT plans' profile (default %(default)s, "
                             "as `make repo`)")
    parser.add_argument("--latency-threads", type=int,
                        help="threads every latency is measured at (default: what one served detector instance gets "
                             "here, the cores shared by the repository's detector instances)")
    parser.add_argument("--stages", nargs="+", choices=STAGE_NAMES, help="run only these stages")
    parser.add_argument("--force", action="store_true", help="re-run even if up to date")
    args = parser.parse_args(argv)
    profile = PROFILES[args.profile]
    overrides = {"epochs": args.epochs, "importance": args.importance,
                 "prune_steps": args.prune_steps, "distill_epochs": args.distill_epochs,
                 "kd_feature_weight": args.kd_feature_weight,
                 "calibration": args.calibration, "calibration_images": args.calibration_images,
                 "min_baseline_map": args.min_baseline_map, "max_map_drop": args.max_map_drop, "quantize_stem": args.quantize_stem,
                 "allow_over_budget": args.allow_over_budget, "search_minutes": args.search_minutes,
                 "search_depths": tuple(args.search_depths) if args.search_depths else None,
                 "search_activations": tuple(args.search_activations) if args.search_activations else None,
                 "search_sizes": tuple(args.search_sizes) if args.search_sizes else None}
    profile = replace(profile, **{k: v for k, v in overrides.items() if v is not None})
    for path, what in ((args.data, "DATA"), (args.weights, "WEIGHTS")):
        if path is not None and not path.exists():
            raise ToolkitError(f"{what}={path} does not exist")
    if profile.max_map_drop < 0:
        raise ToolkitError(f"MAX_MAP_DROP={profile.max_map_drop} is negative (points of mAP50-95 the served model may lose)")
    if any(depth < 1 for depth in profile.search_depths):
        raise ToolkitError(f"SEARCH_DEPTHS={' '.join(map(str, profile.search_depths))}: MACs reductions are >= 1")
    if any(size < 32 or size % 32 for size in profile.search_sizes):
        raise ToolkitError(f"SEARCH_SIZES={' '.join(map(str, profile.search_sizes))}: input sizes are positive "
                           "multiples of 32 (the detector's largest stride)")
    if profile.kd_feature_weight < 0:
        raise ToolkitError(f"KD_FEATURE_WEIGHT={profile.kd_feature_weight} is negative (0 turns the feature term off)")
    if args.imgsz is not None and (args.imgsz < 32 or args.imgsz % 32):
        raise ToolkitError(f"IMGSZ={args.imgsz} is not a positive multiple of 32 (the detector's largest stride)")
    if args.max_batch < 1 or (args.latency_threads is not None and args.latency_threads < 1):
        raise ToolkitError("MAX_BATCH and LATENCY_THREADS must be >= 1")
    ctx = Context(args.artifacts, profile, data=args.data, weights=args.weights, imgsz_override=args.imgsz,
                  allow_weak_baseline=args.allow_weak_baseline, device=args.device, max_batch=args.max_batch,
                  threads=args.latency_threads)
    ctx.training_device()  # a GPU asked for where there is none: said now, not after the dataset
    if profile.search_sizes and (args.imgsz or args.weights or args.data is None):
        smaller_sizes(ctx)  # a size above the trained one said now, not after the baseline trained (user data
        #                     without IMGSZ= or WEIGHTS=: its size is known once the dataset stage read it)
    run_stages(ctx, args.stages, force=args.force)


if __name__ == "__main__":
    main()
