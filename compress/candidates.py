"""Compression candidates: every model the served default may be, made by one piece of code.

A candidate is either
- the INT8 of the unpruned reference (the equal-budget model, or the baseline where the extra
  epochs made it worse): no training at all, the safe end of the front; or
- a student: the baseline pruned to `depth`x fewer MACs (1.0: not pruned), its SiLUs swapped for
  `activation`, distilled from the baseline, exported and quantized like every other row.

Each candidate lives in `<artifacts>/search/<name>/` with `candidate.json`: its cache key (what
it was made from and how), outputs and metrics. A candidate whose key and files are unchanged is
reused, so a second `make MAX_MAP_DROP=...` trains only what the new budget needs. Its
architecture (pruned and swapped, untrained, quantized with a few images) is kept apart under
`arch/`: the search times it before deciding whether the candidate is worth training.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from compress.budget import Reference, fits, keep_float, points_below, status
from compress.errors import ToolkitError
from compress.manifest import file_hash, relative_to
from compress.records import read_json, write_json

REFERENCE_INT8 = "int8_reference"
# Bumped when what a candidate's files hold changes, so older ones are not reused.
CANDIDATE_VERSION = 1
# Calibration images for the untrained architecture's INT8: only its latency is used, which does
# not depend on the calibrated ranges.
ARCHITECTURE_CALIBRATION_IMAGES = 4


@dataclass(frozen=True)
class CandidateSpec:
    activation: str  # "silu" (the baseline's own) or "relu"
    depth: float  # MACs reduction the pruning aims for; 1.0 = unpruned
    trained: bool = True  # False: the INT8 of the unpruned reference model
    # Input size (square) the candidate is trained, calibrated and served at; None: the size the
    # baseline was trained at. A smaller one divides the work by the square of the scale.
    imgsz: int | None = None

    @property
    def name(self) -> str:
        base = REFERENCE_INT8 if not self.trained else f"{self.activation}_{self.depth:g}x"
        return base if self.imgsz is None else f"{base}_{self.imgsz}px"

    @property
    def label(self) -> str:
        size = "" if self.imgsz is None else f", {self.imgsz}x{self.imgsz} input"
        if not self.trained:
            return "INT8 of the unpruned reference" + size
        act = {"relu": "ReLU", "silu": "SiLU"}[self.activation]
        return f"{act} student, " + ("unpruned" if self.depth == 1 else f"{self.depth:g}x fewer MACs") + size


def parse_spec(text: str) -> CandidateSpec:
    """"relu@2.5" -> a ReLU student at 2.5x fewer MACs; "int8" -> the INT8 of the unpruned
    reference; a suffix ":192" -> the same at a 192x192 input."""
    from compress.prune import ACTIVATIONS

    body, _, size = text.partition(":")
    try:
        imgsz = int(size) if size else None
    except ValueError:
        raise ToolkitError(f"candidate {text!r}: the input size after ':' is a whole number of pixels") from None
    if body == "int8":
        return CandidateSpec("silu", 1.0, trained=False, imgsz=imgsz)
    activation, _, target = body.partition("@")
    try:
        depth = float(target)
    except ValueError:
        raise ToolkitError(f"candidate {text!r} is not activation@MACs-reduction (e.g. relu@2.5) or int8") from None
    if activation not in ACTIVATIONS or depth < 1:
        raise ToolkitError(f"candidate {text!r}: activation one of {sorted(ACTIVATIONS)}, MACs reduction >= 1")
    return CandidateSpec(activation, depth, imgsz=imgsz)


def search_space(activations: tuple[str, ...], depths: tuple[float, ...],
                 sizes: tuple[int, ...] = ()) -> list[CandidateSpec]:
    """The reference's INT8, then every activation x depth; an unpruned student is only worth
    training with another activation (an unpruned SiLU student is the equal-budget model again).
    Each of `sizes` (input sizes below the trained one) adds the same space at that size, where
    the unpruned SiLU student is a model of its own (fine-tuned at the smaller input)."""
    specs = []
    for imgsz in (None, *sizes):
        specs.append(CandidateSpec("silu", 1.0, trained=False, imgsz=imgsz))
        for activation in activations:
            for depth in sorted(set(depths) | ({1.0} if activation != "silu" or imgsz else set())):
                if depth > 1 or activation != "silu" or imgsz:
                    specs.append(CandidateSpec(activation, float(depth), imgsz=imgsz))
    return specs


def export_onnx(ctx, weights: Path, out_path: Path, stage: str, pruning_ratio: float = 0.0,
                imgsz: int | None = None) -> Path:
    """The raw-head ONNX every row of the report is measured as (at `imgsz`, default the trained
    size), with its provenance."""
    from compress.export import export_raw_onnx

    return export_raw_onnx(weights, out_path, imgsz or ctx.imgsz(), {
        "toolkit_stage": stage, "source_sha256": file_hash(weights), "pruning_ratio": round(pruning_ratio, 4),
        "baseline_sha256": file_hash(ctx.manifest.output("baseline", "weights"))})


@dataclass(frozen=True)
class CandidateRecord:
    """`<artifacts>/search/<name>/candidate.json`: what a candidate was made from and how (its
    cache key), its files (relative to the artifacts folder) and its metrics."""

    name: str
    key: dict
    outputs: dict[str, str]
    metrics: dict
    seconds: float
    finished: str
    artifacts: Path

    def path(self, output: str) -> Path:
        return self.artifacts / self.outputs[output]

    def files(self) -> dict[str, Path]:
        return {kind: self.path(kind) for kind in self.outputs}

    @classmethod
    def load(cls, path: Path, artifacts: Path, name: str, key: dict | None = None) -> "CandidateRecord | None":
        """The record of candidate `name` at `path`, or None if there is none, its key differs from
        `key` or one of its files is gone."""
        if not path.exists():
            return None
        data = read_json(path, "candidate record", "delete the candidate's folder: the search makes it again")
        if key is not None and data.get("key") != json.loads(json.dumps(key)):
            return None
        record = cls(name, data["key"], data["outputs"], data["metrics"], data.get("seconds", 0.0),
                     data.get("finished", ""), Path(artifacts))
        return record if all(p.exists() for p in record.files().values()) else None

    @classmethod
    def write(cls, path: Path, artifacts: Path, name: str, key: dict, outputs: dict[str, Path], metrics: dict,
              seconds: float) -> "CandidateRecord":
        record = cls(name, json.loads(json.dumps(key)), {k: relative_to(artifacts, v) for k, v in outputs.items()},
                     json.loads(json.dumps(metrics, default=str)), round(seconds, 1), time.strftime("%Y-%m-%dT%H:%M:%S"),
                     Path(artifacts))
        write_json(path, {"key": record.key, "outputs": record.outputs, "metrics": record.metrics,
                          "seconds": record.seconds, "finished": record.finished})
        return record


def float_variant_name(base: str, kept: list[str]) -> str:
    return f"{base}_float{len(kept)}"


class CandidateStore:
    """`<artifacts>/search/<name>/candidate.json` per candidate: cache key, outputs, metrics."""

    def __init__(self, ctx, reference: Reference):
        self.ctx = ctx
        self.artifacts = Path(ctx.artifacts)
        self.root = self.artifacts / "search"
        self.reference = reference  # the unpruned model accuracy is measured against, chosen by the search

    def reference_files(self) -> tuple[Path, Path]:
        """(weights, ONNX) of the unpruned reference."""
        return (self.ctx.manifest.output(self.reference.weights_stage, "weights"),
                self.ctx.manifest.output(self.reference.stage, "onnx"))

    def folder(self, spec: CandidateSpec) -> Path:
        return self.root / spec.name

    def size(self, spec: CandidateSpec) -> int:
        """The candidate's input size (square)."""
        return spec.imgsz or self.ctx.imgsz()

    # -- cache keys ------------------------------------------------------------------------------

    def architecture_key(self, spec: CandidateSpec) -> dict:
        p = self.ctx.profile
        return {"version": CANDIDATE_VERSION, "teacher": file_hash(self.ctx.manifest.output("baseline", "weights")),
                "activation": spec.activation, "depth": spec.depth, "imgsz": self.size(spec),
                "importance": p.importance, "prune_steps": p.prune_steps, "quantize_stem": p.quantize_stem}

    def key(self, spec: CandidateSpec) -> dict:
        p = self.ctx.profile
        calibration = {"calibration": p.calibration, "calibration_images": p.calibration_images,
                       "quantize_stem": p.quantize_stem, "data": self.ctx.data_hash()}
        if not spec.trained:
            sized = {"imgsz": spec.imgsz} if spec.imgsz else {}  # (the trained size: keys as before sizes)
            return {"version": CANDIDATE_VERSION, "source": file_hash(self.reference_files()[1]), **calibration, **sized}
        from compress.distill import DistillSettings

        kd = DistillSettings(feature_weight=p.kd_feature_weight)
        return {**self.architecture_key(spec), **calibration, "epochs": p.distill_epochs,
                "kd": {"feature_weight": kd.feature_weight, "logit_weight": kd.logit_weight,
                       "temperature": kd.temperature}}

    # -- records ---------------------------------------------------------------------------------

    def cached(self, spec: CandidateSpec) -> CandidateRecord | None:
        return CandidateRecord.load(self.folder(spec) / "candidate.json", self.artifacts, spec.name, self.key(spec))

    def variant(self, name: str) -> CandidateRecord | None:
        """A float-kept variant by name, whatever its key (the parity gate's, listed in its verdicts)."""
        return CandidateRecord.load(self.root / name / "candidate.json", self.artifacts, name)

    # -- making them -----------------------------------------------------------------------------

    def architecture(self, spec: CandidateSpec) -> CandidateRecord:
        """The untrained student (pruned, activation swapped) and its INT8 graph, for timing."""
        ctx, folder = self.ctx, self.folder(spec) / "arch"
        if not spec.trained:
            return self.make(spec)  # no training needed: the real thing is as cheap
        key = self.architecture_key(spec)
        record = CandidateRecord.load(folder / "architecture.json", self.artifacts, spec.name, key)
        if record:
            return record
        from compress import yolo
        from compress.prune import count_macs, make_prunable, prune, save_checkpoint, use_activation
        from compress.quantize import quantize

        start = time.perf_counter()
        if spec.imgsz is not None:  # the same pruned network as at the trained size, fed a smaller input
            from dataclasses import replace

            same = self.architecture(replace(spec, imgsz=None))
            student, size = same.path("student"), spec.imgsz
            fp32 = export_onnx(ctx, student, folder / "fp32.onnx", f"search:{spec.name}:architecture",
                               same.metrics["ratio"], imgsz=size)
            quantize(fp32, folder / "int8.onnx", ctx.data_yaml(), (size, size), method="minmax",
                     calibration_count=ARCHITECTURE_CALIBRATION_IMAGES, activation="uint8",
                     keep_stem_float=not ctx.profile.quantize_stem)
            macs, _ = count_macs(yolo.load(student).model, size)
            metrics = {**same.metrics, "gmacs": round(macs / 1e9, 4), "imgsz": size}
            return CandidateRecord.write(folder / "architecture.json", self.artifacts, spec.name, key,
                                         {"student": student, "int8": folder / "int8.onnx"}, metrics,
                                         time.perf_counter() - start)
        teacher = ctx.manifest.output("baseline", "weights")
        model = make_prunable(yolo.load(teacher).model).eval()
        base_macs, base_params = count_macs(model, ctx.imgsz())
        ratio, reduction = 0.0, 1.0
        if spec.depth > 1:
            result = prune(model, ctx.imgsz(), spec.depth, ctx.profile.importance, ctx.profile.prune_steps)
            ratio, reduction = result.ratio, result.macs_reduction
        swapped = use_activation(model, spec.activation)
        student = save_checkpoint(model, folder / "student.pt", {"imgsz": ctx.imgsz(), "task": "detect"},
                                  {"pruning": {"ratio": ratio, "macs_reduction": reduction}})
        fp32 = export_onnx(ctx, student, folder / "fp32.onnx", f"search:{spec.name}:architecture", ratio)
        quantize(fp32, folder / "int8.onnx", ctx.data_yaml(), (ctx.imgsz(), ctx.imgsz()), method="minmax",
                 calibration_count=ARCHITECTURE_CALIBRATION_IMAGES, activation="uint8",
                 keep_stem_float=not ctx.profile.quantize_stem)
        macs, params = count_macs(model, ctx.imgsz())  # torch-pruning's counter, as the pruning target uses
        metrics = {"ratio": round(ratio, 4), "macs_reduction": round(base_macs / macs, 3), "params": params,
                   "gmacs": round(macs / 1e9, 4), "params_kept": round(params / base_params, 3),
                   "swapped_activations": swapped}
        return CandidateRecord.write(folder / "architecture.json", self.artifacts, spec.name, key,
                                     {"student": student, "int8": folder / "int8.onnx"}, metrics,
                                     time.perf_counter() - start)

    def make(self, spec: CandidateSpec) -> CandidateRecord:
        """The trained candidate (reused when its key is unchanged): weights, FP32 and INT8 ONNX,
        their mAP50-95 with the served evaluator, how it was quantized."""
        record = self.cached(spec)
        if record:
            return record
        ctx, folder = self.ctx, self.folder(spec)
        from compress import yolo
        from compress.evaluate import evaluate_onnx
        from compress.quantize import quantize

        start = time.perf_counter()
        size = self.size(spec)
        metrics: dict = {"label": spec.label, "activation": spec.activation, "depth": spec.depth,
                         "trained": spec.trained, "imgsz": size}
        if spec.trained:
            from compress.distill import DistillSettings, distill

            arch = self.architecture(spec)
            # teacher and student both see the candidate's input size: it is fine-tuned for it
            settings = DistillSettings(epochs=ctx.profile.distill_epochs, imgsz=size,
                                       feature_weight=ctx.profile.kd_feature_weight)
            weights = distill(arch.path("student"), ctx.manifest.output("baseline", "weights"), ctx.data_yaml(),
                              folder, settings, device=ctx.training_device())
            fp32 = export_onnx(ctx, weights, folder / "fp32.onnx", f"search:{spec.name}", arch.metrics["ratio"],
                               imgsz=size)
            metrics.update({k: arch.metrics[k] for k in ("ratio", "macs_reduction", "params_kept",
                                                         "swapped_activations")},
                           distill_epochs=settings.epochs, train_seconds=round(time.perf_counter() - start, 1),
                           device=ctx.training_device())
        else:
            weights, fp32 = self.reference_files()
            if spec.imgsz is not None:  # the reference itself, not trained again, fed a smaller input
                fp32 = export_onnx(ctx, weights, folder / "fp32.onnx", f"search:{spec.name}", imgsz=size)
            metrics.update(ratio=0.0, macs_reduction=1.0, params_kept=1.0, swapped_activations=0)
        int8 = folder / "int8.onnx"
        metrics["quantization"] = quantize(fp32, int8, ctx.data_yaml(), (size, size),
                                           method=ctx.profile.calibration,
                                           calibration_count=ctx.profile.calibration_images, activation="uint8",
                                           keep_stem_float=not ctx.profile.quantize_stem)
        metrics.update(yolo.describe(yolo.load(weights), size))
        metrics["fp32_map"] = evaluate_onnx(fp32, ctx.data_yaml())
        metrics["int8_map"] = evaluate_onnx(int8, ctx.data_yaml())
        return CandidateRecord.write(folder / "candidate.json", self.artifacts, spec.name, self.key(spec),
                                     {"weights": weights, "fp32": fp32, "int8": int8}, metrics,
                                     time.perf_counter() - start)

    def rescue(self, spec: CandidateSpec, budget_points: float) -> tuple[CandidateRecord | None, list]:
        """Mixed precision for a candidate whose INT8 alone broke the budget: the keep-float loop
        (compress.budget) judged on the budget. Returns (the first variant that fits or None,
        the trials)."""
        base = self.make(spec)
        made: dict[tuple, tuple[CandidateRecord, bool]] = {}

        def judge(kept: list[str]) -> tuple[bool, dict]:
            variant, created = float_variant(base, kept, self.ctx.data_yaml())
            made[tuple(kept)] = (variant, created)
            drop = points_below(self.reference.map50_95, variant.metrics["int8_map"]["map50_95"])
            print(f"    search: {variant.name}: mAP50-95 {variant.metrics['int8_map']['map50_95']:.4f}, {drop:+.2f} "
                  f"points (budget {budget_points:g}): {status(drop, budget_points)}", flush=True)
            return fits(drop, budget_points), {"name": variant.name, "drop_points": drop, "created": created}

        kept, trials = keep_float(sensitivity_ranking(base, self.ctx.data_yaml()), judge)
        return (made[tuple(kept)][0] if kept else None), trials


def sensitivity_ranking(base: CandidateRecord, data_yaml: Path) -> list[str]:
    """The candidate's quantized convs, most quantization-sensitive (lowest SQNR) first."""
    from compress.export import read_info
    from compress.quantize import conv_sensitivity

    fp32, int8 = base.path("fp32"), base.path("int8")
    return [r["conv"] for r in conv_sensitivity(fp32, int8, data_yaml, read_info(int8).image_size)]


def float_variant(base: CandidateRecord, kept: list[str], data_yaml: Path) -> tuple[CandidateRecord, bool]:
    """`base` quantized again as it was (same calibration, same float layers) with the convs in
    `kept` also in float: a candidate of its own, `<base>_float<k>`, reused while its key holds.
    A variant of a variant keeps its base's float convs too. Returns (the record, whether it was
    made now)."""
    from compress.evaluate import evaluate_onnx
    from compress.export import read_info
    from compress.quantize import quantize

    root = base.metrics.get("base", base.name)
    earlier = list(base.metrics.get("mixed_precision") or [])
    convs = earlier + [conv for conv in kept if conv not in earlier]
    name = float_variant_name(root, convs)
    folder, key = base.artifacts / "search" / name, {**base.key, "float_convs": convs}
    record = CandidateRecord.load(folder / "candidate.json", base.artifacts, name, key)
    if record is not None:
        return record, False
    start = time.perf_counter()
    q, fp32 = base.metrics["quantization"], base.path("fp32")
    quantization = quantize(fp32, folder / "int8.onnx", data_yaml, read_info(fp32).image_size, method=q["calibration"],
                            calibration_count=q["calibration_images"], activation=q["activation"],
                            keep_stem_float=q["stem_float"], float_nodes=convs)
    root_label = base.metrics.get("base_label", base.metrics["label"])
    metrics = {**base.metrics, "label": f"{root_label}, {len(convs)} sensitive conv(s) in float", "base_label": root_label,
               "quantization": quantization, "mixed_precision": convs, "base": root,
               "int8_map": evaluate_onnx(folder / "int8.onnx", data_yaml)}
    return CandidateRecord.write(folder / "candidate.json", base.artifacts, name, key,
                                 {"weights": base.path("weights"), "fp32": fp32, "int8": folder / "int8.onnx"},
                                 metrics, time.perf_counter() - start), True
