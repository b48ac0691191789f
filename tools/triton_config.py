"""Triton model configs built as `ModelConfig` protobuf messages (never string templates).

`RepositorySettings` holds the typed, validated knobs; the `*_config` functions turn them into
messages; `write_config` / `read_config` go through protobuf's text format so a config can be
round-tripped in tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from compress.defaults import DEFAULT_DETECTOR_INSTANCES, DEFAULT_MAX_BATCH_SIZE
from compress.detection import LETTERBOX_FIELDS, PIXEL_TYPES, SERVED_CONF, SERVED_IOU, SERVED_MAX_DET, ImageLimits
from compress.errors import ToolkitError
from compress.export import anchor_count
from compress.openvino_session import PRECISIONS as OPENVINO_PRECISIONS

# local: the Python-backend detector (ONNX Runtime or OpenVINO); the NGC image's own backends:
# onnxruntime (the gated ONNX), openvino (its gated NNCF twin, `make openvino`), tensorrt (the plan)
TARGETS = ("local", "onnxruntime", "openvino", "tensorrt")
DETECTOR_RUNTIMES = ("onnxruntime", "openvino")
HEAD_LAYOUTS = ("decoded", "raw")
ENSEMBLE_NAME = "yolo"
PREPROCESS, DETECTOR, POSTPROCESS = "preprocess", "detector", "postprocess"
DETECTION_OUTPUTS = (
    ("NUM_DETECTIONS", mc.TYPE_INT32, [1]),
    ("BOXES", mc.TYPE_FP32, [-1, 4]),
    ("SCORES", mc.TYPE_FP32, [-1]),
    ("CLASSES", mc.TYPE_INT32, [-1]),
)
WARMUP_DIR = "warmup"  # Triton reads warmup input files from <model>/warmup/
WARMUP_LETTERBOX_FILE = "letterbox.bin"
SHADOW_REFERENCE_FILE = "reference.onnx"  # in postprocess/1/: the FP32 reference shadow parity runs


# What `make tune` measures and writes into the repository (kept by later `make repo` runs)
TUNED_KEYS = ("queue_delay_us", "preferred_batch_sizes", "detector_instances", "preprocess_instances",
              "postprocess_instances")


class ConfigError(ToolkitError):
    """Repository settings that cannot make a valid Triton configuration."""


@dataclass
class RepositorySettings:
    """What the repository builder needs to know; validated on construction."""

    image_size: tuple[int, int]
    num_classes: int
    target: str = "local"
    head_layout: str = "decoded"  # "decoded": output0 [4+nc, A]; "raw": box/class logits
    # The head's layout: the builder reads both from the exported model (compress.export.read_info);
    # the defaults are Ultralytics' P5 detect head.
    strides: tuple[int, ...] = (8, 16, 32)
    reg_max: int = 16
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    dynamic_batching: bool = True  # False: every request runs alone (the naive baseline of make bench-serving)
    # None: 4, 8 and max_batch_size. The largest preferred size caps batches formed from a long
    # queue, so it includes the max (without it 16 queued frames ran as two batches of 8).
    preferred_batch_sizes: list[int] | None = None
    queue_delay_us: int = 2000  # the detector's wait to fill a batch
    step_queue_delay_us: int = 0  # preprocess/postprocess: no wait, they take what is queued
    # Two detector instances overlap one batch's run with the next batch's hand-over; with
    # ort_threads 0 each local instance takes its share of the cores (`make tune` measures it).
    detector_instances: int = DEFAULT_DETECTOR_INSTANCES
    preprocess_instances: int = 1
    # Threads decoding the frames of one preprocess execute() (OpenCV releases the GIL); 0: the
    # instance's share of the cores it may use (cgroup limit included), found where it runs.
    decode_threads: int = 0
    # JPEG decoded at the smallest DCT scale (1/2, 1/4, 1/8) that (nearly) covers the model input; False
    # decodes every pixel, as Ultralytics does (bit-for-bit its preprocessing, at full cost).
    reduced_decode: bool = True
    postprocess_instances: int = 1
    conf_threshold: float = SERVED_CONF
    iou_threshold: float = SERVED_IOU
    max_det: int = SERVED_MAX_DET
    device: str = "cpu"  # detector instances: cpu | gpu (tensorrt: always gpu)
    # What preprocess hands the detector: "uint8" (1 byte per pixel through the ensemble; the
    # builder prepends Cast + Div to the served ONNX) or "float32" (the model as exported).
    # None: uint8 for ONNX targets, float32 for a TensorRT plan (served as built).
    pixel_type: str | None = None
    # 0: local target - each detector instance gets cores / instances threads (computed where it
    # runs); onnxruntime target - the backend's default (all cores per instance: set it on CPU).
    ort_threads: int = 0
    # Idle ONNX Runtime threads spin-waiting for work (local target only; Triton's onnxruntime
    # backend has no per-model switch). Off: the spinning threads took the cores the Python
    # pre/post steps needed.
    ort_spinning: bool = False
    # Overload: a step's queue holds at most this many requests, each for at most this long;
    # beyond either the request is rejected at once (UNAVAILABLE / HTTP 503) instead of every
    # stream's latency growing. 250 ms is 2.5x the 100 ms frame SLO: a frame that waited that
    # long in one queue is late anyway. 0 means unbounded (Triton's default).
    max_queue_size: int = 64
    queue_timeout_us: int = 250_000
    # Per-image limits, checked from the header before decoding (see compress.detection.ImageLimits).
    max_image_pixels: int = ImageLimits.max_pixels
    max_image_bytes: int = ImageLimits.max_bytes
    min_image_side: int = ImageLimits.min_side
    # Shadow parity (compress.shadow): postprocess also takes the detector's input tensor and runs a
    # sampled share of frames through the FP32 reference off the latency path. Off unless the builder
    # has a reference to put beside the served model (`make repo` does: SHADOW=1 by default).
    shadow: bool = False
    shadow_rate: float = 0.05  # share of frames shadowed (0: off, no worker; drift signals still counted)
    shadow_max_fps: float = 5.0  # and at most this many per second per postprocess instance
    shadow_max_cpu: float = 0.8  # none while the server's cores are busier than this share (1: never skip for load)
    shadow_min_frame_recall: float = 0.5  # a compared frame below this is kept as evidence
    # Evidence frames and the agreement log; relative paths are resolved against the repository's
    # parent (`model_repository/` -> `evidence/` beside it; /models in the container -> /evidence)
    evidence_dir: str = "evidence"
    evidence_max_frames: int = 200
    evidence_max_bytes: int = 64 << 20
    # What the gate saw on the val split (tools.agreement.shadow_baseline): exported as gauges for the alerts
    shadow_baseline: dict | None = None
    # The local target's detector runtime: ONNX Runtime on the gated ONNX file, or OpenVINO on its
    # gated NNCF twin (`make openvino`; model.xml) at `openvino_precision` (compress.runtimes)
    runtime: str = "onnxruntime"
    openvino_precision: str = "default"

    def __post_init__(self) -> None:
        self.image_size = tuple(int(v) for v in self.image_size)
        self.strides = tuple(int(v) for v in self.strides)
        if self.preferred_batch_sizes is None:
            self.preferred_batch_sizes = default_preferred_batch_sizes(self.max_batch_size)
        self.preferred_batch_sizes = [int(v) for v in self.preferred_batch_sizes]
        if self.target not in TARGETS:
            raise ConfigError(f"unknown target {self.target!r}", hint=f"choose one of {', '.join(TARGETS)}")
        if self.target == "openvino":
            self.runtime = "openvino"  # the image's OpenVINO backend serves only an IR
        if self.head_layout not in HEAD_LAYOUTS:
            raise ConfigError(f"unknown head layout {self.head_layout!r}", hint=f"choose one of {HEAD_LAYOUTS}")
        if self.device not in ("cpu", "gpu"):
            raise ConfigError(f"unknown device {self.device!r}", hint="choose cpu or gpu")
        if self.pixel_type is None:
            self.pixel_type = "float32" if self.target == "tensorrt" else "uint8"
        if self.pixel_type not in PIXEL_TYPES:
            raise ConfigError(f"unknown pixel type {self.pixel_type!r}", hint=f"choose one of {', '.join(PIXEL_TYPES)}")
        if self.pixel_type == "uint8" and self.target == "tensorrt":
            raise ConfigError("the tensorrt target serves the plan as built (float32 pixels)",
                              hint="use pixel_type float32 with --target tensorrt")
        if self.runtime not in DETECTOR_RUNTIMES:
            raise ConfigError(f"unknown detector runtime {self.runtime!r}", hint=f"choose one of {', '.join(DETECTOR_RUNTIMES)}")
        if self.openvino_precision not in OPENVINO_PRECISIONS:
            raise ConfigError(f"unknown OpenVINO precision {self.openvino_precision!r}",
                              hint=f"choose one of {', '.join(OPENVINO_PRECISIONS)}")
        if self.runtime == "openvino" and (self.target not in ("local", "openvino") or self.device != "cpu"):
            raise ConfigError("the openvino runtime is the local target's or the openvino target's, on the CPU",
                              hint="build with --target local|openvino --device cpu, or --runtime onnxruntime")
        if self.max_batch_size < 1:
            raise ConfigError("max_batch_size must be >= 1")
        bad = [b for b in self.preferred_batch_sizes if not 1 <= b <= self.max_batch_size]
        if bad:
            raise ConfigError(f"preferred batch sizes {bad} outside 1..{self.max_batch_size}")
        if min(self.detector_instances, self.preprocess_instances, self.postprocess_instances) < 1:
            raise ConfigError("instance counts must be >= 1")
        if not 0 <= self.conf_threshold < 1 or not 0 < self.iou_threshold <= 1:
            raise ConfigError("conf_threshold must be in [0, 1) and iou_threshold in (0, 1]")
        if any(s % max(self.strides) for s in self.image_size):
            raise ConfigError(f"image size {self.image_size} is not a multiple of stride {max(self.strides)}")
        if self.decode_threads < 0:
            raise ConfigError("decode_threads must be >= 0 (0: the cores the instance may use)")
        if min(self.max_queue_size, self.queue_timeout_us, self.queue_delay_us, self.step_queue_delay_us) < 0:
            raise ConfigError("max_queue_size, queue_timeout_us and the queue delays must be >= 0")
        if min(self.max_image_pixels, self.max_image_bytes, self.min_image_side) < 1:
            raise ConfigError("max_image_pixels, max_image_bytes and min_image_side must be >= 1")
        if not 0 <= self.shadow_rate <= 1 or self.shadow_max_fps <= 0 or not 0 <= self.shadow_min_frame_recall <= 1 \
                or not 0 < self.shadow_max_cpu <= 1:
            raise ConfigError("shadow_rate and shadow_min_frame_recall must be in [0, 1], shadow_max_fps > 0, "
                              "shadow_max_cpu in (0, 1]")
        if min(self.evidence_max_frames, self.evidence_max_bytes) < 0:
            raise ConfigError("evidence_max_frames and evidence_max_bytes must be >= 0")

    def shadow_parameters(self) -> dict[str, object]:
        """The postprocess parameters of shadow parity (compress.shadow.ShadowSettings reads them back)."""
        baseline = self.shadow_baseline or {}
        agreement, drift = baseline.get("agreement", {}), baseline.get("drift", {})
        gate = {"box_recall": agreement.get("box_recall"), "extra_boxes": agreement.get("extra_boxes"),
                "score_drift": agreement.get("score_drift"),
                "detections_per_frame": drift.get("detections_per_frame"),
                "mean_confidence": drift.get("mean_confidence")}
        return {"shadow_rate": self.shadow_rate, "shadow_max_fps": self.shadow_max_fps,
                "shadow_max_cpu": self.shadow_max_cpu,
                "shadow_min_frame_recall": self.shadow_min_frame_recall, "shadow_evidence_dir": self.evidence_dir,
                "shadow_evidence_max_frames": self.evidence_max_frames,
                "shadow_evidence_max_bytes": self.evidence_max_bytes, "shadow_reference_file": SHADOW_REFERENCE_FILE,
                # the reference runs on the CPU on every target: a few frames a second, and the
                # image's onnxruntime (the Python models') is the CPU build
                "shadow_providers": "cpu",
                **{f"gate_{k}": v for k, v in gate.items() if v is not None}}

    @property
    def detector_file_name(self) -> str:
        """The served file's name in detector/1/."""
        if self.target == "tensorrt":
            return "model.plan"
        return "model.xml" if self.runtime == "openvino" else "model.onnx"

    @property
    def pixel_dtype(self) -> int:
        return mc.TYPE_UINT8 if self.pixel_type == "uint8" else mc.TYPE_FP32

    @property
    def anchors(self) -> int:
        return anchor_count(self.image_size, self.strides)

    def head_outputs(self) -> list[tuple[str, list[int]]]:
        """Detector output tensors (name, dims without batch) for the head layout."""
        if self.head_layout == "raw":
            return [("box_logits", [4 * self.reg_max, self.anchors]), ("class_logits", [self.num_classes, self.anchors])]
        return [("output0", [4 + self.num_classes, self.anchors])]


def default_preferred_batch_sizes(max_batch_size: int) -> list[int]:
    return [b for b in (4, 8) if b < max_batch_size] + [max_batch_size]


def _tensor(cls, name: str, data_type: int, dims: list[int]):
    return cls(name=name, data_type=data_type, dims=dims)


def _instances(count: int, kind: int) -> list:
    return [mc.ModelInstanceGroup(count=count, kind=kind)]


def _dynamic_batching(settings: RepositorySettings, wait_for_batch: bool) -> mc.ModelDynamicBatching | None:
    """Dynamic batching with the bounded, rejecting queue policy.

    Only the detector waits (`queue_delay_us`) to fill batches: that is where batching pays.
    The Python pre/post steps take what is queued and go (`step_queue_delay_us`, 0 by default),
    so the wait is not paid three times.
    """
    if not settings.dynamic_batching:
        return None
    policy = mc.ModelQueuePolicy(timeout_action=mc.ModelQueuePolicy.REJECT,
                                 default_timeout_microseconds=settings.queue_timeout_us,
                                 allow_timeout_override=True, max_queue_size=settings.max_queue_size)
    return mc.ModelDynamicBatching(
        preferred_batch_size=settings.preferred_batch_sizes if wait_for_batch else [],
        max_queue_delay_microseconds=settings.queue_delay_us if wait_for_batch else settings.step_queue_delay_us,
        default_queue_policy=policy,
    )


def _warmup(name: str, batch_size: int, inputs: dict[str, tuple[int, list[int], str | None]]) -> mc.ModelWarmup:
    """One warmup sample: inputs are (dtype, dims, data file under warmup/ or None for zeros)."""
    warmup = mc.ModelWarmup(name=name, batch_size=batch_size, count=1)
    for input_name, (data_type, dims, data_file) in inputs.items():
        item = warmup.inputs[input_name]
        item.data_type, item.dims[:] = data_type, dims
        if data_file:
            item.input_data_file = data_file
        else:
            item.zero_data = True
    return warmup


def _parameters(config: mc.ModelConfig, values: dict[str, object]) -> None:
    for key, value in values.items():
        config.parameters[key].string_value = str(value)


def preprocess_config(settings: RepositorySettings) -> mc.ModelConfig:
    height, width = settings.image_size
    config = mc.ModelConfig(
        name=PREPROCESS,
        backend="python",
        max_batch_size=settings.max_batch_size,
        input=[_tensor(mc.ModelInput, "IMAGE", mc.TYPE_STRING, [1])],
        output=[
            _tensor(mc.ModelOutput, "PIXELS", settings.pixel_dtype, [3, height, width]),
            _tensor(mc.ModelOutput, "LETTERBOX", mc.TYPE_FP32, [5]),
        ],
        instance_group=_instances(settings.preprocess_instances, mc.ModelInstanceGroup.KIND_CPU),
        dynamic_batching=_dynamic_batching(settings, wait_for_batch=False),
        # no model_warmup: Triton 2.51 misreads BYTES warmup files (garbage lengths, once a
        # segfault); the model decodes a synthetic frame in initialize() instead
    )
    _parameters(config, {"image_height": height, "image_width": width, "pixel_type": settings.pixel_type,
                         "decode_threads": settings.decode_threads,
                         "reduced_decode": str(settings.reduced_decode).lower(),
                         "max_image_pixels": settings.max_image_pixels,
                         "max_image_bytes": settings.max_image_bytes, "min_image_side": settings.min_image_side})
    return config


def detector_config(settings: RepositorySettings) -> mc.ModelConfig:
    height, width = settings.image_size
    config = mc.ModelConfig(
        name=DETECTOR,
        max_batch_size=settings.max_batch_size,
        input=[_tensor(mc.ModelInput, "images", settings.pixel_dtype, [3, height, width])],
        output=[_tensor(mc.ModelOutput, name, mc.TYPE_FP32, dims) for name, dims in settings.head_outputs()],
        dynamic_batching=_dynamic_batching(settings, wait_for_batch=True),
        # the first real request should not pay session set-up: one frame and one full batch
        model_warmup=[_warmup(f"zeros_batch_{size}", size, {"images": (settings.pixel_dtype, [3, height, width], None)})
                      for size in sorted({1, settings.max_batch_size})],
    )
    kind = mc.ModelInstanceGroup.KIND_GPU if settings.device == "gpu" else mc.ModelInstanceGroup.KIND_CPU
    if settings.target == "local":
        config.backend = "python"
        config.instance_group.extend(_instances(settings.detector_instances, kind))
        # on a GPU instance the session runs on ONNX Runtime's CUDA provider (onnxruntime-gpu), else the CPU's
        _parameters(config, {"model_file": settings.detector_file_name, "runtime": settings.runtime,
                             "openvino_precision": settings.openvino_precision,
                             "intra_op_threads": settings.ort_threads, "allow_spinning": int(settings.ort_spinning),
                             "providers": "cuda,cpu" if settings.device == "gpu" else "cpu"})
    elif settings.target == "onnxruntime":
        config.platform = "onnxruntime_onnx"
        config.instance_group.extend(_instances(settings.detector_instances, kind))
        if settings.ort_threads:
            _parameters(config, {"intra_op_thread_count": settings.ort_threads})
    elif settings.target == "openvino":
        # Triton's OpenVINO backend (the NGC image's, Intel CPUs) compiles the model once for all
        # its instances, with the batch fixed at max_batch_size: a stream per instance lets their
        # requests run at once, and smaller batches are padded to the max (without the padding
        # it refuses them, the batch-1 warmup included). Threads: the backend's default (the
        # streams share the cores) unless ORT_THREADS= sets INFERENCE_NUM_THREADS.
        config.backend = "openvino"
        config.default_model_filename = settings.detector_file_name
        config.instance_group.extend(_instances(settings.detector_instances, mc.ModelInstanceGroup.KIND_CPU))
        _parameters(config, {"NUM_STREAMS": settings.detector_instances, "ENABLE_BATCH_PADDING": "YES",
                             **({"INFERENCE_NUM_THREADS": settings.ort_threads} if settings.ort_threads else {})})
    else:
        config.platform = "tensorrt_plan"
        config.instance_group.extend(_instances(settings.detector_instances, mc.ModelInstanceGroup.KIND_GPU))
    return config


def postprocess_config(settings: RepositorySettings) -> mc.ModelConfig:
    height, width = settings.image_size
    # with shadow parity on, postprocess also takes the tensor the detector ran on
    pixels = [_tensor(mc.ModelInput, "PIXELS", settings.pixel_dtype, [3, height, width])] if settings.shadow else []
    config = mc.ModelConfig(
        name=POSTPROCESS,
        backend="python",
        max_batch_size=settings.max_batch_size,
        input=[_tensor(mc.ModelInput, name, mc.TYPE_FP32, dims) for name, dims in settings.head_outputs()]
        + [_tensor(mc.ModelInput, "LETTERBOX", mc.TYPE_FP32, [5])] + pixels,
        output=[_tensor(mc.ModelOutput, name, dtype, dims) for name, dtype, dims in DETECTION_OUTPUTS],
        instance_group=_instances(settings.postprocess_instances, mc.ModelInstanceGroup.KIND_CPU),
        dynamic_batching=_dynamic_batching(settings, wait_for_batch=False),
        model_warmup=[_warmup("zero_logits", 1, {
            **{name: (mc.TYPE_FP32, dims, None) for name, dims in settings.head_outputs()},
            "LETTERBOX": (mc.TYPE_FP32, [len(LETTERBOX_FIELDS)], WARMUP_LETTERBOX_FILE),
            **({"PIXELS": (settings.pixel_dtype, [3, height, width], None)} if settings.shadow else {})})],
    )
    _parameters(config, {
        "conf_threshold": settings.conf_threshold,
        "iou_threshold": settings.iou_threshold,
        "max_det": settings.max_det,
        "image_height": settings.image_size[0],
        "image_width": settings.image_size[1],
        "strides": ",".join(str(s) for s in settings.strides),
        **(settings.shadow_parameters() if settings.shadow else {}),
    })
    return config


def ensemble_config(settings: RepositorySettings) -> mc.ModelConfig:
    head = [name for name, _ in settings.head_outputs()]
    steps = [
        mc.ModelEnsembling.Step(model_name=PREPROCESS, model_version=-1,
                                input_map={"IMAGE": "IMAGE"},
                                output_map={"PIXELS": "pixels", "LETTERBOX": "letterbox"}),
        mc.ModelEnsembling.Step(model_name=DETECTOR, model_version=-1,
                                input_map={"images": "pixels"},
                                output_map={name: f"head_{name}" for name in head}),
        mc.ModelEnsembling.Step(model_name=POSTPROCESS, model_version=-1,
                                input_map={**{name: f"head_{name}" for name in head}, "LETTERBOX": "letterbox",
                                           **({"PIXELS": "pixels"} if settings.shadow else {})},
                                output_map={name: name for name, _, _ in DETECTION_OUTPUTS}),
    ]
    return mc.ModelConfig(
        name=ENSEMBLE_NAME,
        platform="ensemble",
        max_batch_size=settings.max_batch_size,
        input=[_tensor(mc.ModelInput, "IMAGE", mc.TYPE_STRING, [1])],
        output=[_tensor(mc.ModelOutput, name, dtype, dims) for name, dtype, dims in DETECTION_OUTPUTS],
        ensemble_scheduling=mc.ModelEnsembling(step=steps),
    )


def all_configs(settings: RepositorySettings) -> list[mc.ModelConfig]:
    return [preprocess_config(settings), detector_config(settings), postprocess_config(settings), ensemble_config(settings)]


def to_text(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def write_config(config: mc.ModelConfig, model_dir: Path) -> Path:
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / "config.pbtxt"
    path.write_text(to_text(config))
    return path


def read_config(path: Path) -> mc.ModelConfig:
    return text_format.Parse(Path(path).read_text(), mc.ModelConfig())
