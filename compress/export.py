"""Stage `export`: PyTorch detector -> ONNX (dynamic batch, opset 17) with provenance metadata.

The graph ends at the raw head (see `export_raw_onnx`); class names, stride and image size go
into `metadata_props` as Ultralytics' exporter writes them, plus where the graph came from
(source weights hash, stage, pruning ratio). `read_info` also reads Ultralytics' own decoded
exports (`output0`), so `--onnx` can serve those too.
"""

from __future__ import annotations

import ast
import shutil
from dataclasses import dataclass
from pathlib import Path

from compress.detection import anchor_count
from compress.errors import UnsupportedModelError, require_file

OPSET = 17


@dataclass(frozen=True)
class OnnxInfo:
    """What downstream tools need from an exported detector."""

    path: Path
    image_size: tuple[int, int]
    names: dict[int, str]
    strides: tuple[int, ...]  # one per head level, in the output's anchor order
    reg_max: int  # DFL bins per box side (raw head)
    head_layout: str
    metadata: dict[str, str]
    pixel_type: str = "float32"  # "float32": 0..1 RGB (as trained); "uint8": 0..255, scaled inside the graph

    @property
    def num_classes(self) -> int:
        return len(self.names)


def raw_head_module(weights: Path):
    """The fused, eval-mode detector whose forward returns (box_logits, class_logits)."""
    import copy
    import types

    from compress import yolo

    model = copy.deepcopy(yolo.load(require_file(weights, "weights")).model).float().eval()
    if hasattr(model, "kd_adapters"):
        del model.kd_adapters
    model = model.fuse(verbose=False) if hasattr(model, "fuse") else model
    detect = model.model[-1]
    if not hasattr(detect, "forward_head"):
        raise UnsupportedModelError(f"{weights}: the last layer is {type(detect).__name__}, not a YOLO Detect head")

    def raw_forward(self, x):
        preds = self.forward_head(x, **self.one2many)
        return preds["boxes"], preds["scores"]

    detect.forward = types.MethodType(raw_forward, detect)
    return model


def export_raw_onnx(weights: Path, out_path: Path, imgsz: int, provenance: dict[str, object]) -> Path:
    """Export with the head cut before decoding: `box_logits` [B, 4*reg_max, A] and
    `class_logits` [B, nc, A].

    DFL, box decoding and sigmoid move to post-processing (compress/detection.py), which keeps
    pixel boxes and 0..1 scores out of one tensor: that mix is what breaks whole-graph INT8.
    Every stage is exported this way so latencies compare like for like.
    """
    import onnx
    import onnxslim
    import torch

    model = raw_head_module(weights)
    detect = model.model[-1]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(1, 3, imgsz, imgsz)
    names = ["box_logits", "class_logits"]
    with torch.no_grad():
        torch.onnx.export(model, dummy, str(out_path), opset_version=OPSET, input_names=["images"], output_names=names,
                          dynamic_axes={n: {0: "batch"} for n in ["images", *names]}, dynamo=False)
    onnx.save(onnxslim.slim(onnx.load(str(out_path))), str(out_path))
    add_metadata(out_path, {
        "names": str(dict(model.names)), "imgsz": str([imgsz, imgsz]), "stride": int(max(model.stride)),
        "strides": str([int(v) for v in detect.stride]), "reg_max": int(detect.reg_max), "task": "detect",
        "head_layout": "raw", **provenance,
    })
    return out_path


def add_metadata(path: Path, values: dict[str, object]) -> None:
    import onnx

    model = onnx.load(str(path))
    existing = {prop.key: prop for prop in model.metadata_props}
    for key, value in values.items():
        prop = existing.get(key) or model.metadata_props.add()
        prop.key, prop.value = key, str(value)
    onnx.save(model, str(path))


def read_info(path: Path) -> OnnxInfo:
    """Image size, class names, stride and head layout of an exported detector (an ONNX file, or
    an OpenVINO IR `.xml` Ultralytics exported, whose metadata.yaml lies beside it)."""
    import onnx

    if Path(path).suffix == ".xml":
        return read_openvino_info(require_file(path, "OpenVINO model"))
    path = require_file(path, "ONNX model")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:
        raise UnsupportedModelError(f"{path} is not a readable ONNX model: {error}") from None
    meta = {prop.key: prop.value for prop in model.metadata_props}
    if "names" not in meta or "imgsz" not in meta:
        raise UnsupportedModelError(f"{path} has no Ultralytics metadata (names, imgsz)",
                                    hint="export it with this toolkit or Ultralytics' exporter")
    names = {int(k): str(v) for k, v in ast.literal_eval(meta["names"]).items()}
    imgsz = ast.literal_eval(meta["imgsz"])
    image_size = (int(imgsz[0]), int(imgsz[1])) if isinstance(imgsz, (list, tuple)) else (int(imgsz), int(imgsz))
    outputs = [o.name for o in model.graph.output]
    layout = "raw" if outputs == ["box_logits", "class_logits"] else "decoded"
    if layout == "decoded" and outputs != ["output0"]:
        raise UnsupportedModelError(f"{path} has outputs {outputs}; expected a YOLO detect head (output0)")
    head = model.graph.output[0].type.tensor_type.shape.dim
    channels, anchors = (d.dim_value or None for d in head[1:3]) if len(head) == 3 else (None, None)
    strides = head_strides(meta, image_size, anchors, path)
    reg_max = channels // 4 if layout == "raw" and channels else int(meta.get("reg_max", 16))
    pixel_type = "uint8" if model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8 else "float32"
    return OnnxInfo(path, image_size, names, strides, reg_max, layout, meta, pixel_type)


def read_openvino_info(xml: Path) -> OnnxInfo:
    """`read_info` for Ultralytics' OpenVINO export: its metadata.yaml and the IR's output shape."""
    import yaml

    from compress.openvino_session import _openvino

    meta_file = xml.parent / "metadata.yaml"
    if not meta_file.exists():
        raise UnsupportedModelError(f"{xml} has no metadata.yaml beside it",
                                    hint="export it with Ultralytics (`yolo export format=openvino`)")
    meta = yaml.safe_load(meta_file.read_text()) or {}
    if "names" not in meta or "imgsz" not in meta:
        raise UnsupportedModelError(f"{meta_file} has no Ultralytics metadata (names, imgsz)")
    imgsz = meta["imgsz"]
    image_size = (int(imgsz[0]), int(imgsz[1])) if isinstance(imgsz, (list, tuple)) else (int(imgsz), int(imgsz))
    ov = _openvino()
    ir = ov.Core().read_model(str(xml))
    outputs = ir.outputs
    pixel_type = "uint8" if ir.inputs[0].get_element_type() == ov.Type.u8 else "float32"
    text_meta = {key: str(value) for key, value in meta.items()}
    if meta.get("head_layout") == "raw":  # the project's own raw-head export, as an IR (compress/openvino_quantize.py)
        if len(outputs) != 2:
            raise UnsupportedModelError(f"{xml} has {len(outputs)} outputs; expected box_logits and class_logits")
        by_name = {name: port for port in outputs for name in port.get_names()}
        if not {"box_logits", "class_logits"} <= set(by_name):
            raise UnsupportedModelError(f"{xml} has no box_logits and class_logits outputs")
        box, scores = by_name["box_logits"].get_partial_shape(), by_name["class_logits"].get_partial_shape()
        anchors = scores[2].get_length() if len(scores) == 3 and scores[2].is_static else None
        # as read_info does for the ONNX: DFL bins from box_logits' channels (4 sides)
        reg_max = box[1].get_length() // 4 if len(box) == 3 and box[1].is_static else int(meta.get("reg_max", 16))
        return OnnxInfo(xml, image_size, {int(k): str(v) for k, v in meta["names"].items()},
                        head_strides(text_meta, image_size, anchors, xml), reg_max, "raw", text_meta, pixel_type)
    if len(outputs) != 1:
        raise UnsupportedModelError(f"{xml} has {len(outputs)} outputs; expected a YOLO detect head (output0)")
    shape = outputs[0].get_partial_shape()
    anchors = shape[2].get_length() if len(shape) == 3 and shape[2].is_static else None
    return OnnxInfo(xml, image_size, {int(k): str(v) for k, v in meta["names"].items()},
                    head_strides(text_meta, image_size, anchors, xml), int(meta.get("reg_max", 16)), "decoded", text_meta,
                    pixel_type)


def with_uint8_pixels(source: Path, out_path: Path) -> Path:
    """A copy of an exported detector that takes uint8 pixels (0..255) and scales them itself.

    The served ensemble then passes 1 byte per pixel from preprocess to the detector instead of
    4. `Cast` + `Div` by 255 computes exactly what the float feed did (letterbox divides the same
    uint8 values by 255 in float32), so detections are unchanged; the rest of the graph, its
    metadata and its opsets are kept as they are.
    An OpenVINO IR (`.xml`) gets the same two steps from OpenVINO's PrePostProcessor, written
    beside its metadata.yaml.
    """
    if Path(source).suffix == ".xml":
        return _ir_with_uint8_pixels(Path(source), Path(out_path))
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(source))
    graph = model.graph
    pixels = graph.input[0]
    if pixels.type.tensor_type.elem_type == TensorProto.UINT8:
        raise UnsupportedModelError(f"{source} already takes uint8 pixels")
    scaled = f"{pixels.name}_scaled"
    for node in graph.node:
        node.input[:] = [scaled if name == pixels.name else name for name in node.input]
    pixels.type.tensor_type.elem_type = TensorProto.UINT8
    graph.initializer.append(helper.make_tensor(f"{pixels.name}_range", TensorProto.FLOAT, [], [255.0]))
    prefix = [helper.make_node("Cast", [pixels.name], [f"{pixels.name}_float"], to=TensorProto.FLOAT,
                               name="pixels_to_float"),
              helper.make_node("Div", [f"{pixels.name}_float", f"{pixels.name}_range"], [scaled], name="pixels_to_unit")]
    for position, node in enumerate(prefix):
        graph.node.insert(position, node)
    onnx.checker.check_model(model)
    onnx.save(model, str(out_path))
    return out_path


def _ir_with_uint8_pixels(source: Path, out_path: Path) -> Path:
    from compress.openvino_session import _openvino

    ov = _openvino()
    model = ov.Core().read_model(str(source))
    if model.inputs[0].get_element_type() == ov.Type.u8:
        raise UnsupportedModelError(f"{source} already takes uint8 pixels")
    steps = ov.preprocess.PrePostProcessor(model)
    steps.input().tensor().set_element_type(ov.Type.u8)
    steps.input().preprocess().convert_element_type(ov.Type.f32).scale(255.0)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # compress_to_fp16=False: the weights stay as the source IR stores them (the gate measured those)
    ov.save_model(steps.build(), str(out_path), compress_to_fp16=False)
    if (source.parent / "metadata.yaml").exists() and source.parent != out_path.parent:
        shutil.copyfile(source.parent / "metadata.yaml", out_path.parent / "metadata.yaml")
    return out_path


def head_strides(meta: dict[str, str], image_size: tuple[int, int], anchors: int | None, path: Path) -> tuple[int, ...]:
    """The head's level strides: recorded by this toolkit's export (`strides`), else the pyramid
    up to Ultralytics' `stride` (the largest) whose anchor count matches the output (P2: 4..32,
    P5: 8..32, P6: 8..64)."""
    if "strides" in meta:
        strides = tuple(int(v) for v in ast.literal_eval(meta["strides"]))
    else:
        largest = int(meta.get("stride", 32))
        pyramids = [tuple(2 ** k for k in range(low, largest.bit_length())) for low in (3, 2, 4)]
        strides = next((p for p in pyramids if anchors is None or anchor_count(image_size, p) == anchors), pyramids[0])
    if anchors is not None and anchor_count(image_size, strides) != anchors:
        raise UnsupportedModelError(f"{path}: {anchors} anchors in the output, but strides {list(strides)} at "
                                    f"{image_size[0]}x{image_size[1]} give {anchor_count(image_size, strides)}",
                                    hint="record the head's strides in the metadata (key 'strides', e.g. [8, 16, 32])")
    return strides


def graph_facts(path: Path) -> dict:
    """Opset, batch dimension and outputs read back from an exported file (recorded, not assumed)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    return {"opset": next(int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")),
            "batch_dim": batch.dim_param or int(batch.dim_value), "outputs": [o.name for o in model.graph.output]}
