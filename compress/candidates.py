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

from compress.errors import ToolkitError
from compress.manifest import file_hash

REFERENCE_INT8 = "int8_reference"
# Bumped when what a candidate's files hold changes, so older ones are not reused.
CANDIDATE_VERSION = 1
# Calibration images for the untrained architecture's INT8: only its latency is used, which does
# not depend on the calibrated ranges.
ARCHITECTURE_CALIBRATION_IMAGES = 4
# Mixed-precision rescue: how many of the most quantization-sensitive convs to keep float, in turn.
MIXED_PRECISION_COUNTS = (1, 2, 4, 8)


@dataclass(frozen=True)
class CandidateSpec:
    activation: str  # "silu" (the baseline's own) or "relu"
    depth: float  # MACs reduction the pruning aims for; 1.0 = unpruned
    trained: bool = True  # False: the INT8 of the unpruned reference model

    @property
    def name(self) -> str:
        return REFERENCE_INT8 if not self.trained else f"{self.activation}_{self.depth:g}x"

    @property
    def label(self) -> str:
        if not self.trained:
            return "INT8 of the unpruned reference"
        act = {"relu": "ReLU", "silu": "SiLU"}[self.activation]
        return f"{act} student, " + ("unpruned" if self.depth == 1 else f"{self.depth:g}x fewer MACs")


def parse_spec(text: str) -> CandidateSpec:
    """"relu@2.5" -> a ReLU student at 2.5x fewer MACs; "int8" -> the INT8 of the unpruned reference."""
    from compress.prune import ACTIVATIONS

    if text == "int8":
        return CandidateSpec("silu", 1.0, trained=False)
    activation, _, target = text.partition("@")
    try:
        depth = float(target)
    except ValueError:
        raise ToolkitError(f"candidate {text!r} is not activation@MACs-reduction (e.g. relu@2.5) or int8") from None
    if activation not in ACTIVATIONS or depth < 1:
        raise ToolkitError(f"candidate {text!r}: activation one of {sorted(ACTIVATIONS)}, MACs reduction >= 1")
    return CandidateSpec(activation, depth)


def search_space(activations: tuple[str, ...], depths: tuple[float, ...]) -> list[CandidateSpec]:
    """The reference's INT8, then every activation x depth; an unpruned student is only worth
    training with another activation (an unpruned SiLU student is the equal-budget model again)."""
    specs = [CandidateSpec("silu", 1.0, trained=False)]
    for activation in activations:
        for depth in sorted(set(depths) | ({1.0} if activation != "silu" else set())):
            if depth > 1 or activation != "silu":
                specs.append(CandidateSpec(activation, float(depth)))
    return specs


def export_onnx(ctx, weights: Path, out_path: Path, stage: str, pruning_ratio: float = 0.0) -> Path:
    """The raw-head ONNX every row of the report is measured as, with its provenance."""
    from compress.export import export_raw_onnx

    return export_raw_onnx(weights, out_path, ctx.imgsz(), {
        "toolkit_stage": stage, "source_sha256": file_hash(weights), "pruning_ratio": round(pruning_ratio, 4),
        "baseline_sha256": file_hash(ctx.manifest.output("baseline", "weights"))})


class CandidateStore:
    """`<artifacts>/search/<name>/candidate.json` per candidate: cache key, outputs, metrics."""

    def __init__(self, ctx, reference_stage: str = "finetune"):
        self.ctx = ctx
        self.root = Path(ctx.artifacts) / "search"
        # the unpruned model accuracy is measured against: "finetune" (equal budget) or "export"
        self.reference_stage = reference_stage

    def reference_files(self) -> tuple[Path, Path]:
        """(weights, ONNX) of the unpruned reference."""
        weights = ("finetune", "weights") if self.reference_stage == "finetune" else ("baseline", "weights")
        return self.ctx.manifest.output(*weights), self.ctx.manifest.output(self.reference_stage, "onnx")

    def folder(self, spec: CandidateSpec) -> Path:
        return self.root / spec.name

    # -- cache keys ------------------------------------------------------------------------------

    def architecture_key(self, spec: CandidateSpec) -> dict:
        p = self.ctx.profile
        return {"version": CANDIDATE_VERSION, "teacher": file_hash(self.ctx.manifest.output("baseline", "weights")),
                "activation": spec.activation, "depth": spec.depth, "imgsz": self.ctx.imgsz(),
                "importance": p.importance, "prune_steps": p.prune_steps, "quantize_stem": p.quantize_stem}

    def key(self, spec: CandidateSpec) -> dict:
        p = self.ctx.profile
        calibration = {"calibration": p.calibration, "calibration_images": p.calibration_images,
                       "quantize_stem": p.quantize_stem, "data": self.ctx.data_hash()}
        if not spec.trained:
            return {"version": CANDIDATE_VERSION, "source": file_hash(self.reference_files()[1]), **calibration}
        from compress.distill import DistillSettings

        kd = DistillSettings(feature_weight=p.kd_feature_weight)
        return {**self.architecture_key(spec), **calibration, "epochs": p.distill_epochs,
                "kd": {"feature_weight": kd.feature_weight, "logit_weight": kd.logit_weight,
                       "temperature": kd.temperature}}

    # -- records ---------------------------------------------------------------------------------

    def _read(self, path: Path, key: dict) -> dict | None:
        if not path.exists():
            return None
        record = json.loads(path.read_text())
        if record.get("key") != json.loads(json.dumps(key)):
            return None
        if not all((self.root.parent / rel).exists() for rel in record["outputs"].values()):
            return None
        return record

    def _write(self, path: Path, key: dict, outputs: dict[str, Path], metrics: dict, seconds: float) -> dict:
        root = self.root.parent.resolve()
        record = {"key": key, "outputs": {k: str(Path(v).resolve().relative_to(root)) for k, v in outputs.items()},
                  "metrics": metrics, "seconds": round(seconds, 1), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2, default=str))
        return record

    def path(self, record: dict, output: str) -> Path:
        return self.root.parent / record["outputs"][output]

    def cached(self, spec: CandidateSpec) -> dict | None:
        return self._read(self.folder(spec) / "candidate.json", self.key(spec))

    # -- making them -----------------------------------------------------------------------------

    def architecture(self, spec: CandidateSpec) -> dict:
        """The untrained student (pruned, activation swapped) and its INT8 graph, for timing."""
        ctx, folder = self.ctx, self.folder(spec) / "arch"
        if not spec.trained:
            return self.make(spec)  # no training needed: the real thing is as cheap
        key = self.architecture_key(spec)
        record = self._read(folder / "architecture.json", key)
        if record:
            return record
        from compress import yolo
        from compress.prune import count_macs, make_prunable, prune, save_checkpoint, use_activation
        from compress.quantize import quantize

        start = time.perf_counter()
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
        return self._write(folder / "architecture.json", key, {"student": student, "int8": folder / "int8.onnx"},
                           metrics, time.perf_counter() - start)

    def make(self, spec: CandidateSpec) -> dict:
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
        metrics: dict = {"label": spec.label, "activation": spec.activation, "depth": spec.depth,
                         "trained": spec.trained}
        if spec.trained:
            from compress.distill import DistillSettings, distill

            arch = self.architecture(spec)
            settings = DistillSettings(epochs=ctx.profile.distill_epochs, imgsz=ctx.imgsz(),
                                       feature_weight=ctx.profile.kd_feature_weight)
            weights = distill(self.path(arch, "student"), ctx.manifest.output("baseline", "weights"), ctx.data_yaml(),
                              folder, settings)
            fp32 = export_onnx(ctx, weights, folder / "fp32.onnx", f"search:{spec.name}", arch["metrics"]["ratio"])
            metrics.update({k: arch["metrics"][k] for k in ("ratio", "macs_reduction", "params_kept",
                                                            "swapped_activations")},
                           distill_epochs=settings.epochs, train_seconds=round(time.perf_counter() - start, 1))
        else:
            weights, fp32 = self.reference_files()
            metrics.update(ratio=0.0, macs_reduction=1.0, params_kept=1.0, swapped_activations=0)
        int8 = folder / "int8.onnx"
        metrics["quantization"] = quantize(fp32, int8, ctx.data_yaml(), (ctx.imgsz(), ctx.imgsz()),
                                           method=ctx.profile.calibration,
                                           calibration_count=ctx.profile.calibration_images, activation="uint8",
                                           keep_stem_float=not ctx.profile.quantize_stem)
        metrics.update(yolo.describe(yolo.load(weights), ctx.imgsz()))
        metrics["fp32_map"] = evaluate_onnx(fp32, ctx.data_yaml())
        metrics["int8_map"] = evaluate_onnx(int8, ctx.data_yaml())
        return self._write(folder / "candidate.json", self.key(spec),
                           {"weights": weights, "fp32": fp32, "int8": int8}, metrics, time.perf_counter() - start)

    def rescue(self, spec: CandidateSpec, reference_map: float, budget_points: float,
               counts: tuple[int, ...] = MIXED_PRECISION_COUNTS) -> dict | None:
        """Mixed precision for a candidate whose INT8 alone broke the budget: keep its most
        quantization-sensitive convs in float, 1, 2, 4, 8 at a time, until it fits. Returns the
        first record that fits (`<name>_float<k>`), or None."""
        from compress.evaluate import evaluate_onnx
        from compress.quantize import conv_sensitivity, quantize

        ctx, base = self.ctx, self.make(spec)
        fp32, int8 = self.path(base, "fp32"), self.path(base, "int8")
        size = (ctx.imgsz(), ctx.imgsz())
        ranking = [r["conv"] for r in conv_sensitivity(fp32, int8, ctx.data_yaml(), size)]
        for count in (c for c in counts if c <= len(ranking)):
            kept = ranking[:count]
            name = f"{spec.name}_float{count}"
            folder, key = self.root / name, {**self.key(spec), "float_convs": kept}
            record = self._read(folder / "candidate.json", key)
            created = record is None
            if created:
                start = time.perf_counter()
                quantization = quantize(fp32, folder / "int8.onnx", ctx.data_yaml(), size,
                                        method=ctx.profile.calibration, calibration_count=ctx.profile.calibration_images,
                                        activation="uint8", keep_stem_float=not ctx.profile.quantize_stem,
                                        float_nodes=kept)
                metrics = {**base["metrics"], "label": f"{spec.label}, {count} sensitive conv(s) in float",
                           "quantization": quantization, "mixed_precision": kept,
                           "int8_map": evaluate_onnx(folder / "int8.onnx", ctx.data_yaml())}
                record = self._write(folder / "candidate.json", key,
                                     {"weights": self.path(base, "weights"), "fp32": fp32, "int8": folder / "int8.onnx"},
                                     metrics, time.perf_counter() - start)
            drop = round((reference_map - record["metrics"]["int8_map"]["map50_95"]) * 100, 2)
            print(f"    search: {name}: mAP50-95 {record['metrics']['int8_map']['map50_95']:.4f}, {drop:+.2f} points "
                  f"(budget {budget_points:g}): {'fits' if drop <= budget_points else 'over budget'}", flush=True)
            if drop <= budget_points:
                return {**record, "name": name, "created": created}
        return None
