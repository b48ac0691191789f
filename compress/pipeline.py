"""Run the compression pipeline's stages in order, reusing the ones that are up to date.

    python -m compress.pipeline                      # every stage, default profile
    python -m compress.pipeline --stages export      # one stage (its inputs must exist)
    python -m compress.pipeline --weights my.pt --data my/data.yaml

Each stage reads artifacts, writes new ones under `--artifacts` and records itself in
`manifest.json` (inputs' hashes, settings, outputs, metrics).
"""

from __future__ import annotations

import argparse
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


PROFILES = {
    "default": Profile(),
    "tiny": Profile(dataset=DatasetSpec(train_images=160, val_images=40, image_size=128), epochs=30, imgsz=128,
                    optimizer="AdamW", lr0=0.004),
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

def _export_run(ctx: Context, out: Path):
    from compress.export import export_onnx

    weights = ctx.manifest.output("baseline", "weights")
    path = export_onnx(weights, out / "baseline.onnx", ctx.imgsz(),
                       {"toolkit_stage": "baseline", "source_sha256": file_hash(weights), "pruning_ratio": 0.0})
    return {"onnx": path}, {"file_mb": round(path.stat().st_size / 1e6, 3)}


EXPORT = Stage(
    "export",
    inputs=lambda ctx: {"weights": file_hash(ctx.manifest.output("baseline", "weights"))},
    settings=lambda ctx: {"imgsz": ctx.imgsz(), "opset": 17, "dynamic": True},
    run=_export_run,
)


STAGES = [DATASET, BASELINE, EXPORT]
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
    return results


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--profile", choices=sorted(PROFILES), default="default")
    parser.add_argument("--data", type=Path, help="an Ultralytics data.yaml (default: generated)")
    parser.add_argument("--weights", type=Path, help="an Ultralytics detect .pt (default: trained here)")
    parser.add_argument("--epochs", type=int, help="override the profile's training epochs")
    parser.add_argument("--stages", nargs="+", choices=STAGE_NAMES, help="run only these stages")
    parser.add_argument("--force", action="store_true", help="re-run even if up to date")
    args = parser.parse_args(argv)
    profile = PROFILES[args.profile]
    if args.epochs:
        profile = replace(profile, epochs=args.epochs)
    for path, what in ((args.data, "DATA"), (args.weights, "WEIGHTS")):
        if path is not None and not path.exists():
            raise ToolkitError(f"{what}={path} does not exist")
    ctx = Context(args.artifacts, profile, data=args.data, weights=args.weights)
    run_stages(ctx, args.stages, force=args.force)


if __name__ == "__main__":
    main()
