"""The one implementation of the detection maths: letterbox, head decoding, NMS, box mapping.

Imported by the Triton Python-backend models (the repository builder copies this file next
to them as `yolo_ops.py`) and by every in-process path (parity, benchmarks, the client's
local mode), so "served == in-process" holds by construction. NumPy and OpenCV only.
"""

from __future__ import annotations

import io
import sys
import warnings
from dataclasses import dataclass

import cv2
import numpy as np

PAD_VALUE = 114
LETTERBOX_FIELDS = ("gain", "pad_x", "pad_y", "orig_w", "orig_h")
PIXEL_TYPES = ("float32", "uint8")  # what a detector takes: 0..1 floats (as trained) or 0..255 bytes
# The deployed detection thresholds (the repository's defaults, the gate's comparison threshold)
SERVED_CONF, SERVED_IOU, SERVED_MAX_DET = 0.25, 0.45, 300


def usable_cores(cgroup: str = "/sys/fs/cgroup") -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota (a Kubernetes CPU
    limit shows every core of the node in the affinity mask, but only the quota's worth runs)."""
    import math
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quotas = ((f"{cgroup}/cpu.max", None),  # cgroup v2: "<quota> <period>" or "max <period>"
              (f"{cgroup}/cpu/cpu.cfs_quota_us", f"{cgroup}/cpu/cpu.cfs_period_us"))  # cgroup v1 (-1: none)
    for quota_file, period_file in quotas:
        try:
            with open(quota_file) as handle:
                text = handle.read().split()
            if period_file:
                with open(period_file) as handle:
                    text.append(handle.read().strip())
            quota, period = text[0], text[1]
        except (OSError, IndexError):
            continue
        if quota not in ("max", "-1") and int(period) > 0:
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
        break
    return max(1, cores)


def share_of_cores(instances: int) -> int:
    """Intra-op threads for one of `instances` ONNX Runtime sessions sharing this process's cores.

    Several single-threaded instances rather than one multi-threaded one: a multi-threaded run
    waits at every operator for its slowest thread while the Python steps hold a core.
    """
    return max(1, usable_cores() // max(1, instances))


class ImageDecodeError(ValueError):
    """Bytes that are not a decodable image, or an image outside the limits: the sender's fault."""


@dataclass(frozen=True)
class ImageLimits:
    """What one encoded image may cost, checked from its header before any pixel is decoded.

    The defaults suit camera frames: 40 MP covers 8K (33 MP); 32 MiB covers a 40 MP JPEG at
    high quality; sides under 8 px are not frames (and 1xN images cannot be letterboxed sensibly).
    The served values live in the preprocess model's config parameters.
    """

    max_pixels: int = 40_000_000
    max_bytes: int = 32 * 1024 * 1024
    min_side: int = 8

    @classmethod
    def from_parameters(cls, params: dict[str, str]) -> "ImageLimits":
        defaults = cls()
        return cls(int(params.get("max_image_pixels", defaults.max_pixels)),
                   int(params.get("max_image_bytes", defaults.max_bytes)),
                   int(params.get("min_image_side", defaults.min_side)))


# EXIF orientations 5-8 turn the image a quarter: its upright width is the stored height
_QUARTER_TURNS = {5, 6, 7, 8}
_EXIF_ORIENTATION = 0x0112


def _ignore_pillow_bomb_warning() -> None:
    """Pillow warns above its own pixel limit; ours decides. Installed once for the process:
    `warnings.catch_warnings` swaps global state and is not safe in the preprocess's decode threads."""
    from PIL import Image

    if not getattr(_ignore_pillow_bomb_warning, "done", False):
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        _ignore_pillow_bomb_warning.done = True


def image_header(data: bytes, limits: ImageLimits) -> tuple[int, int, str]:
    """(width, height, format) from the header alone (Pillow reads lazily); nothing is decoded.
    The size is upright (EXIF orientation applied), as the decoders return the pixels."""
    from PIL import Image

    # Ultralytics replaces Image.open with a wrapper that tries to pip-install a HEIF plugin
    # whenever a file is unidentified; garbage bytes must not do that, so use Pillow's own.
    image_open = getattr(sys.modules.get("ultralytics.utils.patches"), "_image_open", Image.open)
    _ignore_pillow_bomb_warning()
    try:
        with image_open(io.BytesIO(data)) as header:
            width, height = header.size
            if header.format == "JPEG" and header.getexif().get(_EXIF_ORIENTATION) in _QUARTER_TURNS:
                width, height = height, width
            return int(width), int(height), str(header.format)
    except Image.DecompressionBombError:  # Pillow's hard stop is 2x its MAX_IMAGE_PIXELS, far above ours
        raise ImageDecodeError(f"image header claims more than {2 * (Image.MAX_IMAGE_PIXELS or 0):,} pixels, over the "
                               f"limit max_image_pixels={limits.max_pixels:,}; refused before decoding") from None
    except Exception:  # Pillow raises many types for garbage; all mean the same to the sender
        raise ImageDecodeError(f"not a decodable image ({len(data)} bytes): unknown format or corrupt header") from None


def check_image(data: bytes, limits: ImageLimits) -> tuple[int, int, str]:
    """Refuse an image by its size and header, in microseconds, before decoding; returns the header."""
    if not len(data):
        raise ImageDecodeError("not a decodable image (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageDecodeError(f"image of {len(data):,} bytes is over the limit max_image_bytes={limits.max_bytes:,}")
    width, height, kind = image_header(data, limits)
    if width * height > limits.max_pixels:
        raise ImageDecodeError(f"{kind} header says {width}x{height} = {width * height / 1e6:.1f} MP, over the limit "
                               f"max_image_pixels={limits.max_pixels:,}; refused before decoding")
    if min(width, height) < limits.min_side:
        raise ImageDecodeError(f"{kind} image is {width}x{height}: a side under the limit "
                               f"min_image_side={limits.min_side} px")
    return width, height, kind


def decode_image(data: bytes, limits: ImageLimits | None = ImageLimits(), kind: str = "") -> np.ndarray:
    """Encoded JPEG/PNG/... bytes to a BGR uint8 image (EXIF orientation applied), every pixel.

    With `limits` (the default), the header is checked first; every failure is an ImageDecodeError.
    """
    kind = f"{kind} " if kind else ""
    if limits is not None:
        kind = check_image(data, limits)[2] + " "
    array = np.frombuffer(data, dtype=np.uint8)
    try:
        image = cv2.imdecode(array, cv2.IMREAD_COLOR) if array.size else None
    except cv2.error as error:
        raise ImageDecodeError(f"not a decodable {kind}image ({len(data)} bytes): {error.err}") from None
    if image is None or image.size == 0:
        raise ImageDecodeError(f"not a decodable {kind}image ({len(data)} bytes)")
    return image


# JPEG decodes at 1/2, 1/4 or 1/8 scale in the DCT domain (libjpeg's scaled IDCT): a fraction of
# the work of a full decode, and each output pixel is the average of a k x k block (area-like).
REDUCED_DECODE_FLAGS = {8: cv2.IMREAD_REDUCED_COLOR_8, 4: cv2.IMREAD_REDUCED_COLOR_4, 2: cv2.IMREAD_REDUCED_COLOR_2}


# A reduced decode may come out up to this much smaller than the letterbox keeps (the letterbox then
# enlarges it by as much): 1080p into 256x256 decodes at 1/8 (240x135, enlarged 1.067x) instead of 1/4.
# Measured on the 1080p camera frames at 256x256 (AMD EPYC, one core): 2.20 against 2.69 ms a decode,
# and served mAP50-95 0.9068 against 0.9034 at 1/4 (the block averages are no worse than a 1/4 decode
# shrunk by bilinear resizing).
MAX_DECODE_ENLARGEMENT = 1.1


def decode_scale(width: int, height: int, kind: str, size: tuple[int, int]) -> int:
    """The largest JPEG decode reduction (8, 4, 2, else 1) whose output holds nearly the pixels the
    letterbox keeps: scale x gain <= MAX_DECODE_ENLARGEMENT."""
    if kind != "JPEG":
        return 1
    gain = min(size[0] / height, size[1] / width)
    return next((scale for scale in REDUCED_DECODE_FLAGS if scale * gain <= MAX_DECODE_ENLARGEMENT), 1)


def decode_for_model(data: bytes, size: tuple[int, int], limits: ImageLimits = ImageLimits(),
                     reduced: bool = True) -> tuple[np.ndarray, int, tuple[int, int]]:
    """Decode no more pixels than a `size` (h, w) letterbox keeps: (BGR image, decode scale,
    upright original (width, height)). The header is checked against `limits` first; `reduced=False`
    decodes every pixel (what Ultralytics does)."""
    width, height, kind = check_image(data, limits)
    scale = decode_scale(width, height, kind, size) if reduced else 1
    if scale == 1:  # the decoded pixels are the original ones, however the decoder oriented them
        image = decode_image(data, None, kind)
        return image, 1, (image.shape[1], image.shape[0])
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), REDUCED_DECODE_FLAGS[scale])
    if image is None or image.size == 0:
        raise ImageDecodeError(f"not a decodable {kind} image ({len(data)} bytes)")
    return image, scale, (width, height)


def prepare_image(data: bytes, size: tuple[int, int], pixel_type: str = "float32",
                  limits: ImageLimits = ImageLimits(), reduced: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Encoded bytes -> (model tensor, letterbox params): the served preprocess, one image."""
    image, scale, original = decode_for_model(data, size, limits, reduced)
    return letterbox(image, size, pixel_type, scale, original)


def letterbox(image: np.ndarray, size: tuple[int, int], pixel_type: str = "float32", decode_scale: int = 1,
              original_size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Resize keeping aspect ratio and pad to `size` (h, w), as Ultralytics' LetterBox does.

    Returns the CHW RGB tensor - float32 in 0..1, or with `pixel_type="uint8"` the same pixels
    as bytes 0..255 for a model that scales them itself - and the letterbox parameters
    [gain, pad_x, pad_y, orig_w, orig_h] needed to map boxes back. For an image decoded at
    1/`decode_scale`, the gain maps to the `original_size` (w, h) pixels, not the decoded ones.
    """
    if pixel_type not in PIXEL_TYPES:
        raise ValueError(f"pixel type {pixel_type!r} is not one of {PIXEL_TYPES}")
    height, width = image.shape[:2]
    if not height or not width:
        raise ImageDecodeError(f"image of {width}x{height} pixels cannot be letterboxed")
    target_h, target_w = size
    gain = min(target_h / height, target_w / width)
    # at least one pixel: a 1x600 image would otherwise resize to a zero-size axis
    new_w, new_h = max(1, round(width * gain)), max(1, round(height * gain))
    pad_w, pad_h = (target_w - new_w) / 2, (target_h - new_h) / 2
    if (new_w, new_h) != (width, height):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = round(pad_h - 0.1), round(pad_h + 0.1)
    left, right = round(pad_w - 0.1), round(pad_w + 0.1)
    image = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)
    chw = image[:, :, ::-1].transpose(2, 0, 1)
    tensor = np.ascontiguousarray(chw) if pixel_type == "uint8" else np.ascontiguousarray(chw, dtype=np.float32) / 255.0
    orig_w, orig_h = original_size or (width, height)
    params = np.array([gain / decode_scale, left, top, orig_w, orig_h], dtype=np.float32)
    return tensor, params


@dataclass
class Detections:
    """Detections of one image, in original-image pixels."""

    boxes: np.ndarray  # [N, 4] float32 xyxy
    scores: np.ndarray  # [N] float32
    classes: np.ndarray  # [N] int32

    def __getitem__(self, keep) -> "Detections":
        """The detections selected by a boolean mask or index array."""
        return Detections(self.boxes[keep], self.scores[keep], self.classes[keep])

    def __len__(self) -> int:
        return len(self.scores)

    def to_json(self, names: dict[int, str] | None = None) -> list[dict]:
        return [
            {
                "box_xyxy": [round(float(v), 2) for v in box],
                "score": round(float(score), 4),
                "class_id": int(cls),
                **({"class_name": names.get(int(cls), str(int(cls)))} if names else {}),
            }
            for box, score, cls in zip(self.boxes, self.scores, self.classes)
        ]


def anchor_count(image_size: tuple[int, int], strides: tuple[int, ...]) -> int:
    """Anchors of a head with these level strides: one per grid cell of every level."""
    return sum((image_size[0] // s) * (image_size[1] // s) for s in strides)


def make_anchors(image_size: tuple[int, int], strides: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Anchor centres [A, 2] (grid units) and their strides [A], in the head's output order."""
    points, stride_list = [], []
    for stride in strides:
        h, w = image_size[0] // stride, image_size[1] // stride
        sy, sx = np.meshgrid(np.arange(h, dtype=np.float32) + 0.5, np.arange(w, dtype=np.float32) + 0.5, indexing="ij")
        points.append(np.stack([sx.ravel(), sy.ravel()], axis=-1))
        stride_list.append(np.full(h * w, stride, dtype=np.float32))
    return np.concatenate(points), np.concatenate(stride_list)


def _dfl_xywh(box_logits: np.ndarray, anchor_points: np.ndarray, anchor_strides: np.ndarray) -> np.ndarray:
    """DFL box logits [B, 4*reg_max, N] of N anchors to xywh [B, 4, N] in input pixels.

    The softmax expectation over reg_max bins gives left/top/right/bottom distances in grid
    units; each anchor's values depend only on its own logits, so any subset of anchors decodes
    to exactly what it would inside the full head.
    """
    batch, channels, count = box_logits.shape
    reg_max = channels // 4
    logits = box_logits.reshape(batch, 4, reg_max, count).astype(np.float32)
    logits = logits - logits.max(axis=2, keepdims=True)
    weights = np.exp(logits)
    weights /= weights.sum(axis=2, keepdims=True)
    distances = (weights * np.arange(reg_max, dtype=np.float32)[None, None, :, None]).sum(axis=2)
    centres = anchor_points.T[None]  # [1, 2, N]
    top_left = centres - distances[:, :2]
    bottom_right = centres + distances[:, 2:]
    return np.concatenate([(top_left + bottom_right) / 2, bottom_right - top_left], axis=1) * anchor_strides[None, None]


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float32)))


def _head_anchors(anchors_count: int, image_size: tuple[int, int], strides: tuple[int, ...]):
    anchor_points, anchor_strides = make_anchors(image_size, strides)
    if len(anchor_points) != anchors_count:
        raise ValueError(f"head has {anchors_count} anchors, image size {image_size} implies {len(anchor_points)}")
    return anchor_points, anchor_strides


def decode_raw_head(box_logits: np.ndarray, class_logits: np.ndarray, image_size: tuple[int, int],
                    strides: tuple[int, ...]) -> np.ndarray:
    """Raw head outputs ([B, 4*reg_max, A], [B, nc, A]) to Ultralytics' decoded [B, 4+nc, A].

    Boxes come out as xywh in input pixels and scores as sigmoids, like `output0`.
    """
    anchor_points, anchor_strides = _head_anchors(box_logits.shape[2], image_size, strides)
    return np.concatenate([_dfl_xywh(box_logits, anchor_points, anchor_strides), _sigmoid(class_logits)], axis=1)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, classes: np.ndarray | None = None) -> np.ndarray:
    """Class-aware greedy NMS on xyxy boxes (OpenCV's batched NMS, in C++); returns kept indices in
    descending score order. Without `classes` every box is one class."""
    if not len(boxes):
        return np.zeros(0, dtype=np.int64)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).astype(np.float64)
    classes = np.zeros(len(boxes), dtype=np.int32) if classes is None else classes.astype(np.int32)
    # score threshold -inf: thresholds are applied before NMS, here every candidate takes part
    keep = cv2.dnn.NMSBoxesBatched(xywh, scores.astype(np.float32), classes, -np.inf, float(iou_threshold))
    return np.asarray(keep, dtype=np.int64).reshape(-1)


def _check_letterbox(params: np.ndarray) -> None:
    if not np.isfinite(params).all() or params[0] <= 0:
        raise ValueError(f"letterbox parameters {params.tolist()} are not a valid letterbox")


def _best_class(class_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best class and its score per anchor of [A, nc] scores."""
    if not np.isfinite(class_scores).all():  # a NaN would win argmax and hide the real classes
        class_scores = np.where(np.isfinite(class_scores), class_scores, -np.inf)
    classes = class_scores.argmax(axis=1)
    return classes, class_scores[np.arange(len(classes)), classes]


def _image_detections(xywh: np.ndarray, scores: np.ndarray, classes: np.ndarray, params: np.ndarray,
                      iou_threshold: float, max_det: int) -> Detections:
    """Candidates of one image (xywh [N, 4] in input pixels) -> class-aware NMS -> original pixels."""
    # NaN/inf boxes from a broken model drop out here instead of poisoning NMS
    finite = np.isfinite(xywh).all(axis=1)
    xywh, scores, classes = xywh[finite], scores[finite], classes[finite]
    boxes = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], axis=1)
    keep = nms(boxes, scores, iou_threshold, classes)[:max_det]
    boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
    gain, pad_x, pad_y, orig_w, orig_h = (float(v) for v in params)
    boxes = (boxes - np.array([pad_x, pad_y, pad_x, pad_y], dtype=np.float32)) / gain
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, orig_w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, orig_h)
    return Detections(boxes.astype(np.float32), scores.astype(np.float32), classes.astype(np.int32))


def postprocess(prediction: np.ndarray, letterbox_params: np.ndarray, conf_threshold: float = SERVED_CONF,
                iou_threshold: float = SERVED_IOU, max_det: int = SERVED_MAX_DET) -> list[Detections]:
    """Decoded head output [B, 4+nc, A] plus letterbox params [B, 5] to per-image detections.

    Best class per anchor, confidence filter, class-aware NMS, then boxes mapped back to
    original-image pixels and clipped.
    """
    results = []
    for pred, params in zip(prediction, letterbox_params):
        _check_letterbox(params)
        pred = pred.T  # [A, 4+nc]
        classes, scores = _best_class(pred[:, 4:])
        mask = scores > conf_threshold
        results.append(_image_detections(pred[mask, :4], scores[mask], classes[mask], params, iou_threshold, max_det))
    return results


def postprocess_raw(box_logits: np.ndarray, class_logits: np.ndarray, letterbox_params: np.ndarray,
                    image_size: tuple[int, int], strides: tuple[int, ...], conf_threshold: float = SERVED_CONF,
                    iou_threshold: float = SERVED_IOU, max_det: int = SERVED_MAX_DET) -> list[Detections]:
    """`postprocess(decode_raw_head(...))` with the same result, decoding boxes only where a class
    passes the confidence threshold: the DFL softmax over every anchor is most of the
    post-processing time when few anchors are confident."""
    anchor_points, anchor_strides = _head_anchors(box_logits.shape[2], image_size, strides)
    results = []
    for boxes, logits, params in zip(box_logits, class_logits, letterbox_params):
        _check_letterbox(params)
        classes, scores = _best_class(_sigmoid(logits).T)
        keep = np.flatnonzero(scores > conf_threshold)
        xywh = _dfl_xywh(boxes[None][:, :, keep], anchor_points[keep], anchor_strides[keep])[0].T
        results.append(_image_detections(xywh, scores[keep], classes[keep], params, iou_threshold, max_det))
    return results


def head_detections(outputs: dict[str, np.ndarray], letterbox_params: np.ndarray, image_size: tuple[int, int],
                    strides: tuple[int, ...], conf_threshold: float = SERVED_CONF, iou_threshold: float = SERVED_IOU,
                    max_det: int = SERVED_MAX_DET) -> list[Detections]:
    """Per-image detections from a detector's outputs by name: the raw head (`box_logits`,
    `class_logits`) or Ultralytics' decoded `output0`."""
    if "box_logits" in outputs:
        return postprocess_raw(outputs["box_logits"], outputs["class_logits"], letterbox_params, image_size, strides,
                               conf_threshold, iou_threshold, max_det)
    return postprocess(outputs["output0"], letterbox_params, conf_threshold, iou_threshold, max_det)


def model_parameters(config: dict, required: tuple[str, ...]) -> dict[str, str]:
    """A Triton model config's string parameters; every one in `required` must be there. The
    repository builder writes them all: the models keep no fallback defaults of their own, which
    could drift from the builder's."""
    params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
    missing = [key for key in required if key not in params]
    if missing:
        raise ValueError(f"model {config.get('name')!r}: config parameter(s) {', '.join(missing)} missing "
                         "(rebuild the repository with `make repo`)")
    return params


def instance_count(config: dict) -> int:
    """Instances of a Triton model config (every instance group's count)."""
    return sum(int(group.get("count", 1)) for group in config.get("instance_group", [])) or 1


def run_isolated(requests: list, run_batch, on_error) -> list:
    """Run a Python-backend `execute()` so that one bad request fails only itself.

    `run_batch(requests)` returns one response per request. If the batch raises, each request
    runs alone and a failing one gets `on_error(exception)` as its response. The common path
    stays one batched call.
    """
    try:
        return run_batch(requests)
    except Exception as error:
        if len(requests) == 1:
            return [on_error(error)]
    responses = []
    for request in requests:
        try:
            responses.extend(run_batch([request]))
        except Exception as error:
            responses.append(on_error(error))
    return responses


def pad_detections(detections: list[Detections]) -> dict[str, np.ndarray]:
    """Stack per-image detections into padded tensors (the served output layout)."""
    width = max((len(d) for d in detections), default=0)
    batch = len(detections)
    boxes = np.zeros((batch, width, 4), dtype=np.float32)
    scores = np.zeros((batch, width), dtype=np.float32)
    classes = np.full((batch, width), -1, dtype=np.int32)
    counts = np.zeros((batch, 1), dtype=np.int32)
    for i, det in enumerate(detections):
        n = len(det)
        boxes[i, :n], scores[i, :n], classes[i, :n], counts[i, 0] = det.boxes, det.scores, det.classes, n
    return {"NUM_DETECTIONS": counts, "BOXES": boxes, "SCORES": scores, "CLASSES": classes}


def unpad_detections(outputs: dict[str, np.ndarray]) -> list[Detections]:
    """Inverse of `pad_detections` (what a client does with the served outputs)."""
    return [
        Detections(outputs["BOXES"][i, :n], outputs["SCORES"][i, :n], outputs["CLASSES"][i, :n])
        for i, n in enumerate(int(c) for c in outputs["NUM_DETECTIONS"].reshape(-1))
    ]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes, [N, M]."""
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (br - tl).clip(0).prod(axis=2)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(axis=1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(axis=1)
    return inter / (area_a[:, None] + area_b[None, :] - inter + 1e-9)


# IoU at which a candidate's box counts as the reference's box again (the parity gate, shadow parity)
AGREEMENT_IOU = 0.5


# The candidate's side of a comparison is decoded at this share of the reference's threshold: a
# reference box whose score moved from 0.26 to 0.24 is score drift (measured on its own), not a lost box.
CANDIDATE_CONF_SHARE = 0.5


@dataclass
class AgreementCounts:
    """What detection agreement is made of, as sums over frames (so live counters and an
    in-process run over the same frames add up to the same numbers)."""

    frames: int = 0
    reference_boxes: int = 0
    found: int = 0  # reference boxes the candidate has again (IoU >= AGREEMENT_IOU, same class)
    overlapping: int = 0  # reference boxes with any candidate box at IoU >= AGREEMENT_IOU
    class_flips: int = 0  # overlapping, but never with the same class
    score_drift_sum: float = 0.0  # sum over found boxes of |score change|
    served_boxes: int = 0  # the candidate's boxes at the deployed threshold
    extra_boxes: int = 0  # ... of which no reference box is at IoU >= AGREEMENT_IOU, same class

    def __add__(self, other: "AgreementCounts") -> "AgreementCounts":
        return AgreementCounts(*(getattr(self, f) + getattr(other, f) for f in self.__dataclass_fields__))

    @property
    def box_recall(self) -> float:
        return self.found / max(self.reference_boxes, 1)

    def summary(self) -> dict:
        """The gate's agreement figures (recall, score drift, class flips) and the extra-box share."""
        return {"reference_boxes": self.reference_boxes, "box_recall": round(self.box_recall, 4),
                "score_drift": round(self.score_drift_sum / self.found, 4) if self.found else 0.0,
                "class_flips": round(self.class_flips / max(self.overlapping, 1), 4),
                "extra_boxes": round(self.extra_boxes / max(self.served_boxes, 1), 4), "frames": self.frames}


def frame_agreement(reference: Detections, candidate: Detections, served: Detections | None = None,
                    reference_low: Detections | None = None) -> AgreementCounts:
    """One frame: `reference` at the deployed threshold, `candidate` at CANDIDATE_CONF_SHARE of it
    (finds the reference's boxes again); `served` (the candidate at the deployed threshold) against
    `reference_low` (the reference at the lower one) counts the candidate's extra boxes."""
    counts = AgreementCounts(frames=1, reference_boxes=len(reference))
    if len(reference) and len(candidate):
        iou = box_iou(reference.boxes, candidate.boxes)
        same_class = reference.classes[:, None] == candidate.classes[None, :]
        for i in range(len(reference)):
            overlapping = iou[i] >= AGREEMENT_IOU
            if not overlapping.any():
                continue
            counts.overlapping += 1
            hits = overlapping & same_class[i]
            if hits.any():
                counts.found += 1
                j = int(np.argmax(np.where(hits, iou[i], -1)))
                counts.score_drift_sum += abs(float(reference.scores[i]) - float(candidate.scores[j]))
            else:
                counts.class_flips += 1
    if served is not None:
        counts.served_boxes = len(served)
        low = reference if reference_low is None else reference_low
        if len(served) and len(low):
            iou = box_iou(served.boxes, low.boxes)
            kept = (iou >= AGREEMENT_IOU) & (served.classes[:, None] == low.classes[None, :])
            counts.extra_boxes = int((~kept.any(axis=1)).sum())
        else:
            counts.extra_boxes = len(served)
    return counts


def agreement_counts(reference: list[Detections], candidate: list[Detections],
                     served: list[Detections] | None = None,
                     reference_low: list[Detections] | None = None) -> AgreementCounts:
    """`frame_agreement` summed over frames (the same frames, in the same order, on every side)."""
    total = AgreementCounts()
    for i, (ref, cand) in enumerate(zip(reference, candidate)):
        total += frame_agreement(ref, cand, served[i] if served is not None else None,
                                 reference_low[i] if reference_low is not None else None)
    return total


def detection_agreement(reference: list[Detections], candidate: list[Detections]) -> dict:
    """How far a candidate detector agrees with a reference on the same frames: recall of the
    reference's boxes (IoU >= AGREEMENT_IOU, same class), the mean |score change| of the boxes
    found, and the share of overlapping boxes whose class changed."""
    summary = agreement_counts(reference, candidate).summary()
    return {key: summary[key] for key in ("reference_boxes", "box_recall", "score_drift", "class_flips")}


def compare_heads(reference_heads: dict[str, np.ndarray], candidate_heads: dict[str, np.ndarray],
                  letterbox_params: np.ndarray, image_size: tuple[int, int], strides: tuple[int, ...],
                  conf_threshold: float = SERVED_CONF, iou_threshold: float = SERVED_IOU,
                  max_det: int = SERVED_MAX_DET) -> tuple[list[AgreementCounts], list[Detections], list[Detections]]:
    """Per-frame agreement of a candidate's head outputs with a reference's on the same input
    tensors, decoded by the served post-processing: the parity gate's comparison (`tools.agreement`)
    and the served shadow's (`compress.shadow`) are this function. Returns (counts, the candidate's
    detections at the deployed threshold - what was served -, the reference's)."""
    low = conf_threshold * CANDIDATE_CONF_SHARE

    def decode(heads, conf):
        return head_detections(heads, letterbox_params, image_size, strides, conf, iou_threshold, max_det)

    reference, reference_low = decode(reference_heads, conf_threshold), decode(reference_heads, low)
    served, candidate_low = decode(candidate_heads, conf_threshold), decode(candidate_heads, low)
    counts = [frame_agreement(*sides) for sides in zip(reference, candidate_low, served, reference_low)]
    return counts, served, reference
