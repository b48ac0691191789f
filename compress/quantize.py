"""Explicit INT8 (Q/DQ) post-training quantization with ONNX Runtime, for every candidate.

- Input: a raw-head ONNX (see export.export_raw_onnx). The head's decode (DFL, pixel boxes,
  sigmoid) is not in the graph, so no tensor mixes pixel boxes with 0..1 scores: quantizing
  such a Concat under one scale is what gives a whole-graph INT8 YOLO mAP 0.
- Calibration: letterboxed images from the training split; MinMax / Entropy / Percentile.
- Per-channel symmetric INT8 weights. Activations: `uint8` (asymmetric) for ONNX Runtime on
  x86 CPUs, where it has fast kernels (measured: S8 activations ran 2x slower than FP32), and
  `int8` (symmetric) for TensorRT, which accepts only symmetric signed INT8 Q/DQ (the plan stage
  writes that one for the served model, with the same calibration settings).
- Float-kept layers are chosen deliberately: by default the head's final convs (their outputs
  are the logits the box/score decode is most sensitive to); `float_nodes` adds more
  (the parity gate's sensitivity analysis picks them by measurement).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from compress.detection import prepare_image
from compress.errors import InputFileError, UnsupportedModelError

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


def equal_batch_size(count: int, largest: int) -> int:
    """The largest batch <= `largest` that divides `count`: ONNX Runtime's percentile/entropy
    calibrators stack every batch's activations, so a ragged last batch cannot be stacked."""
    return max(size for size in range(1, max(1, min(largest, count)) + 1) if count % size == 0)


class ImageCalibrationReader:
    """onnxruntime CalibrationDataReader over letterboxed images, in equal small batches."""

    def __init__(self, images: list[Path], image_size: tuple[int, int], batch: int = 8, input_name: str = "images"):
        tensors = []
        for path in images:
            try:  # prepared as the served preprocess prepares frames (reduced JPEG decode included)
                tensors.append(prepare_image(Path(path).read_bytes(), image_size)[0])
            except (OSError, ValueError) as error:
                raise InputFileError(f"cannot read calibration image {path}: {error}") from None
        batch = equal_batch_size(len(tensors), batch)
        self.batches = [np.stack(tensors[i:i + batch]) for i in range(0, len(tensors), batch)]
        self.input_name = input_name
        self._iter = iter(self.batches)

    def get_next(self):
        batch = next(self._iter, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self):
        self._iter = iter(self.batches)

    def __iter__(self):  # ORT's Q/DQ debugger iterates readers
        return ({self.input_name: batch} for batch in self.batches)


def calibration_images(data_yaml: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` images of the training split, spread deterministically."""
    from compress import data

    images = data.load(data_yaml).split("train")
    rng = np.random.default_rng(seed)
    return [images[i] for i in sorted(rng.choice(len(images), min(count, len(images)), replace=False))]


def head_output_convs(model) -> list[str]:
    """Names of the Conv nodes whose outputs reach the graph outputs through reshapes/concats only."""
    producers = {out: node for node in model.graph.node for out in node.output}
    passthrough = {"Reshape", "Concat", "Flatten", "Transpose", "Identity", "Squeeze", "Unsqueeze"}
    found, stack, seen = [], [o.name for o in model.graph.output], set()
    while stack:
        tensor = stack.pop()
        node = producers.get(tensor)
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type == "Conv":
            found.append(node.name)
        elif node.op_type in passthrough:
            stack.extend(node.input)
    return sorted(found)


def stem_conv(model) -> list[str]:
    """The first Conv, which sees raw pixels: kept float unless `--quantize-stem`."""
    return [n.name for n in model.graph.node if n.op_type == "Conv"][:1]


def quantize(onnx_in: Path, onnx_out: Path, data_yaml: Path, image_size: tuple[int, int], method: str = "percentile",
             calibration_count: int = 64, keep_head_float: bool = True, keep_stem_float: bool = True,
             float_nodes: list[str] | None = None, per_channel: bool = True, activation: str = "uint8",
             images: list[Path] | None = None) -> dict:
    """Write a Q/DQ INT8 model; returns what was kept in float and how it was calibrated (on
    `images`, default `calibration_count` train images)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATION_METHODS:
        raise UnsupportedModelError(f"unknown calibration method {method!r}", hint=f"choose {CALIBRATION_METHODS}")
    graph = onnx.load(str(onnx_in))
    if [o.name for o in graph.graph.output] != ["box_logits", "class_logits"]:
        raise UnsupportedModelError(f"{onnx_in} has outputs {[o.name for o in graph.graph.output]}",
                                    hint="quantize a raw-head export (box_logits, class_logits), not a decoded one")
    excluded = sorted(set((head_output_convs(graph) if keep_head_float else []) +
                          (stem_conv(graph) if keep_stem_float else []) + list(float_nodes or [])))
    images = list(images) if images is not None else calibration_images(data_yaml, calibration_count)
    reader = ImageCalibrationReader(images, image_size)
    calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
    onnx_out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Symbolic shape inference fails on these graphs; ONNX shape inference is enough.
        quant_pre_process(str(onnx_in), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(onnx_out), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
            activation_type=QuantType.QInt8 if activation == "int8" else QuantType.QUInt8,
            weight_type=QuantType.QInt8, calibrate_method=calibrate, nodes_to_exclude=excluded,
            extra_options={"ActivationSymmetric": activation == "int8", "WeightSymmetric": True,
                           "CalibPercentile": 99.999},
        )
    # Provenance metadata survives: copy it from the float model.
    quantized = onnx.load(str(onnx_out))
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(graph.metadata_props)
    onnx.save(quantized, str(onnx_out))
    return {"calibration": method, "calibration_images": len(images),
            "calibration_batch": int(reader.batches[0].shape[0]), "float_nodes": excluded, "per_channel": per_channel,
            "activation": activation, "stem_float": keep_stem_float, "opset": _opset(quantized)}


def _opset(model) -> int:
    return next(int(entry.version) for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


def qdq_summary(path: Path) -> dict:
    """Which Conv nodes are quantized (weights fed through DequantizeLinear) and which are float."""
    import onnx

    model = onnx.load(str(path))
    producers = {out: node for node in model.graph.node for out in node.output}
    quantized, floating = [], []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        weight_producer = producers.get(node.input[1])
        input_producer = producers.get(node.input[0])
        is_q = (weight_producer is not None and weight_producer.op_type == "DequantizeLinear"
                and input_producer is not None and input_producer.op_type == "DequantizeLinear")
        (quantized if is_q else floating).append(node.name)
    return {"quantized_convs": quantized, "float_convs": floating}


def conv_sensitivity(fp32: Path, int8: Path, data_yaml: Path, image_size, count: int = 16) -> list[dict]:
    """Quantized convs ranked by SQNR of their outputs (float vs Q/DQ model), worst first."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (collect_activations, compute_activation_error,
                                                         create_activation_matching,
                                                         modify_model_output_intermediate_tensors)

    reader = ImageCalibrationReader(calibration_images(data_yaml, count, seed=1), image_size, batch=4)
    with tempfile.TemporaryDirectory() as tmp:
        float_aug, qdq_aug = Path(tmp) / "float.onnx", Path(tmp) / "qdq.onnx"
        modify_model_output_intermediate_tensors(str(fp32), str(float_aug))
        modify_model_output_intermediate_tensors(str(int8), str(qdq_aug))
        float_acts = collect_activations(str(float_aug), reader)
        reader.rewind()
        qdq_acts = collect_activations(str(qdq_aug), reader)
    errors = compute_activation_error(create_activation_matching(qdq_acts, float_acts))
    quantized = set(qdq_summary(int8)["quantized_convs"])  # float-kept convs are not candidates
    graph = onnx.load(str(fp32)).graph
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    conv_of = {}
    for node in graph.node:
        if node.op_type == "Conv" and node.name in quantized:
            # A ReLU student's conv is quantized after its activation (Q/DQ placed on the Relu's output)
            after = consumers.get(node.output[0], [])
            folded = len(after) == 1 and after[0].op_type in ("Relu", "Clip")
            conv_of[after[0].output[0] if folded else node.output[0]] = node.name
    ranked = [{"conv": conv_of[tensor], "sqnr_db": round(float(err["xmodel_err"]), 2)}
              for tensor, err in errors.items() if tensor in conv_of and "xmodel_err" in err]
    return sorted(ranked, key=lambda r: r["sqnr_db"])
