"""INT8 for OpenVINO the way OpenVINO runs it fastest: NNCF post-training quantization of the FP32
twin (FakeQuantize in an OpenVINO IR), instead of ONNX Runtime's Q/DQ file.

The served Q/DQ model's recipe where the two quantizers share a setting: the same FP32 twin, the
same calibration images (the train split, letterboxed as served), the same layers kept float (the
head's output convolutions and the stem: `float_nodes`, ONNX node names), symmetric weights and
asymmetric activations (NNCF's `mixed` preset; the Q/DQ file's uint8 activations). The ranges
are NNCF's own (its default statistics and fast bias correction), not the served percentile
calibration: part of any accuracy gap between the two is the quantizer's.
openvino and nncf are imported only here, and only when a model is quantized.
"""

from __future__ import annotations

from pathlib import Path

from compress.errors import MissingDependencyError, UnsupportedModelError, require_file


def _imports():
    try:
        import nncf
        import openvino
    except ImportError:
        raise MissingDependencyError("OpenVINO and NNCF are not installed in this environment",
                                     hint="run `make venv` (requirements.lock pins openvino and nncf)") from None
    return nncf, openvino


def openvino_ops_of(ov_model, onnx_path: Path, node_names: list[str]) -> list[str]:
    """Friendly names of the OpenVINO ops that carry out the ONNX nodes `node_names`: OpenVINO's
    ONNX reader keeps each ONNX output tensor's name on the op that produces it; a Conv with a
    bias becomes Convolution -> Add, and the Convolution is what NNCF would quantize."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    wanted_tensors = {out for node in graph.node if node.name in set(node_names) for out in node.output}
    names: list[str] = []
    for op in ov_model.get_ordered_ops():
        if not any(wanted_tensors & set(output.get_names()) for output in op.outputs()):
            continue
        names.append(op.get_friendly_name())
        source = op
        while source.get_type_name() in ("Add", "Convert", "Reshape") and source.get_input_size():
            source = source.input_value(0).get_node()
            names.append(source.get_friendly_name())
            if source.get_type_name() == "Convolution":
                break
    return sorted(set(names))


def write_metadata(onnx_path: Path, path: Path) -> None:
    """The ONNX's provenance and head facts (names, imgsz, strides, reg_max, layout) as the
    metadata.yaml OpenVINO folders carry, so the IR is read like the file it came from."""
    import ast

    import onnx
    import yaml

    meta = {prop.key: prop.value for prop in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    for key in ("names", "imgsz", "strides"):
        if key in meta:
            meta[key] = ast.literal_eval(meta[key])
    path.write_text(yaml.safe_dump(meta, sort_keys=True))


def nncf_quantize(fp32_onnx: Path, xml_out: Path, image_size: tuple[int, int], images: list[Path],
                  float_nodes: list[str] | None = None) -> dict:
    """Write `xml_out` (+ .bin): the FP32 twin quantized by NNCF on `images`; returns what was kept
    float and how it was calibrated. Raises when a float node cannot be found in OpenVINO's graph
    (a head quantized by accident is the whole-graph-INT8 trap)."""
    from compress.quantize import ImageCalibrationReader

    nncf, ov = _imports()
    require_file(fp32_onnx, "FP32 ONNX model")
    try:
        model = ov.convert_model(str(fp32_onnx))
    except Exception as error:  # OpenVINO raises its own RuntimeError text
        raise UnsupportedModelError(f"OpenVINO cannot read {fp32_onnx}: {str(error).splitlines()[0]}") from None
    float_nodes = list(float_nodes or [])
    ignored = openvino_ops_of(model, fp32_onnx, float_nodes)
    all_convolutions = {op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"}
    convolutions = all_convolutions.intersection(ignored)
    if len(convolutions) < len(float_nodes):
        raise UnsupportedModelError(f"only {len(convolutions)} of the {len(float_nodes)} layers to keep float were found "
                                    f"in OpenVINO's graph of {fp32_onnx}",
                                    hint="the ONNX node names and OpenVINO's op names no longer line up")
    reader = ImageCalibrationReader(images, image_size)
    # one image per sample: NNCF counts samples and reduces statistics over them
    samples = [image[None] for feed in reader for image in feed[reader.input_name]]
    try:
        quantized = nncf.quantize(model, nncf.Dataset(samples), preset=nncf.QuantizationPreset.MIXED,
                                  subset_size=len(samples),
                                  ignored_scope=nncf.IgnoredScope(names=ignored) if ignored else None)
    except Exception as error:  # NNCF raises many kinds; one line for the user
        raise UnsupportedModelError(f"NNCF could not quantize {fp32_onnx}: "
                                    f"{(str(error).strip().splitlines() or [type(error).__name__])[0]}") from None
    xml_out.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(xml_out))
    write_metadata(fp32_onnx, xml_out.parent / "metadata.yaml")
    fake_quantize = sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ordered_ops())
    return {"quantizer": f"nncf {nncf.__version__}", "preset": "mixed", "calibration_images": len(samples),
            "float_convolutions": sorted(convolutions),
            "float_nodes": float_nodes, "openvino_float_ops": ignored, "fake_quantize_ops": fake_quantize}


def served_twin(artifacts: Path, data_yaml: Path, image_size: tuple[int, int], xml_out: Path,
                served_onnx: Path) -> tuple[Path, dict] | None:
    """The served INT8 model's FP32 twin quantized by NNCF with the served recipe (its calibration
    images and float layers) -> `xml_out`; None when the served model is not INT8, or is not the
    report's choice (a gate record of another stage: its recipe is not in the report)."""
    from compress.progress import stage
    from compress.quantize import calibration_images
    from compress.records import Report

    served = Report.load(artifacts).served
    if served.precision != "int8" or not served.quantization or Path(served.onnx) != Path(served_onnx) \
            or "calibration_images" not in served.quantization:
        return None
    recipe = served.quantization
    with stage("the served model's FP32 twin, NNCF INT8 for OpenVINO"):
        record = nncf_quantize(served.fp32_onnx, xml_out, image_size,
                               calibration_images(data_yaml, recipe["calibration_images"]), recipe.get("float_nodes"))
    return xml_out, record
