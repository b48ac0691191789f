"""Stage `plan`: TensorRT FP16 and INT8 engine plans, built where `tensorrt` imports.

Built from the served candidate (the report's choice), with Polygraphy's TensorRT loaders:
- INT8: a strongly-typed network from a symmetric Q/DQ ONNX of the served model's FP32 twin
  (same calibration and float layers): precisions come from the Q/DQ nodes, not from builder
  flags or calibrators.
- FP16: TensorRT 11 builds strongly-typed networks only (its FP16 builder flag is gone), so the
  precision lives in the ONNX: the FP32 twin converted to FP16 weights and activations with
  float32 inputs and outputs (`fp16_onnx`), built strongly typed. TensorRT 10, which still has
  the flag, builds the FP32 twin with it.
- One optimization profile covers batch 1..max (the repository's max batch, `MAX_BATCH=`;
  optimum at the preferred batch); a timing cache is read and written so rebuilds are fast; the
  TensorRT version is recorded, since a plan only runs on the TensorRT version (and GPU) it was
  built with.

Nothing here runs without TensorRT: `tensorrt_version()` returns None, and the stage records
itself as skipped with that reason (TensorRT ships in the NGC TensorRT / Triton containers).
"""

from __future__ import annotations

from pathlib import Path

from compress.defaults import DEFAULT_MAX_BATCH_SIZE
from compress.errors import MissingDependencyError, UnsupportedModelError

NO_TENSORRT = ("TensorRT is not installed here (it cannot be pip-installed on these machines); "
               "run `make plan` inside an NGC TensorRT or Triton container on a GPU machine")


def tensorrt_version() -> str | None:
    try:
        import tensorrt
    except ImportError:
        return None
    return tensorrt.__version__


def fp16_onnx(onnx_in: Path, onnx_out: Path) -> Path:
    """The model with FP16 weights and activations and its float32 inputs and outputs kept, for a
    strongly-typed FP16 engine (onnxconverter-common, the converter Polygraphy uses)."""
    import warnings

    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(onnx_in))
    # the exporter's value_info types the tensors float32; the converter would leave some of them
    # so beside its FP16 casts (ONNX Runtime then refuses the graph): shapes are inferred afresh
    del model.graph.value_info[:]
    with warnings.catch_warnings():  # one warning per weight too small for FP16: clamped, as intended
        warnings.simplefilter("ignore", UserWarning)
        model = float16.convert_float_to_float16(model, keep_io_types=True)
    onnx_out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(onnx_out))
    return onnx_out


def fp16_needs_typed_onnx(trt) -> bool:
    """TensorRT 11 removed the FP16 builder flag: FP16 comes from the network's types."""
    return int(trt.__version__.split(".")[0]) >= 11 or not hasattr(trt.BuilderFlag, "FP16")


def build_plan(onnx_path: Path, plan_path: Path, precision: str, image_size: tuple[int, int],
               max_batch: int = DEFAULT_MAX_BATCH_SIZE, opt_batch: int = 8, timing_cache: Path | None = None,
               workspace_gib: float = 2.0, work_dir: Path | None = None) -> dict:
    """Build one serialized engine with Polygraphy's TensorRT loaders; returns its build facts."""
    if tensorrt_version() is None:
        raise MissingDependencyError(NO_TENSORRT)
    if precision not in ("int8", "fp16"):
        raise UnsupportedModelError(f"precision must be int8 or fp16, not {precision!r}")
    import tensorrt as trt
    from polygraphy.backend.trt import CreateConfig, EngineFromNetwork, NetworkFromOnnxPath, Profile, SaveEngine

    height, width = image_size
    typed_fp16 = precision == "fp16" and fp16_needs_typed_onnx(trt)
    if typed_fp16:
        onnx_path = fp16_onnx(onnx_path, Path(work_dir or plan_path.parent) / "fp16.onnx")
    # INT8 comes from the Q/DQ nodes and (TensorRT 11) FP16 from the ONNX's types: strongly-typed
    # networks, no builder flags or calibrators.
    network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=precision == "int8" or typed_fp16)
    profile = Profile().add("images", min=(1, 3, height, width), opt=(min(opt_batch, max_batch), 3, height, width),
                            max=(max_batch, 3, height, width))
    cache = str(timing_cache) if timing_cache else None
    config = CreateConfig(fp16=(precision == "fp16" and not typed_fp16) or None, profiles=[profile],
                          load_timing_cache=cache if timing_cache and timing_cache.exists() else None,
                          memory_pool_limits={trt.MemoryPoolType.WORKSPACE: int(workspace_gib * (1 << 30))})
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        SaveEngine(EngineFromNetwork(network, config, save_timing_cache=cache), path=str(plan_path))()
    except Exception as error:  # Polygraphy raises its own PolygraphyException with TensorRT's parser/builder log
        raise UnsupportedModelError(f"TensorRT failed to build a {precision} engine from {onnx_path}: {error}") from None
    return {"precision": precision, "tensorrt_version": trt.__version__, "max_batch": max_batch,
            "fp16_from": ("a strongly-typed FP16 ONNX" if typed_fp16 else "the FP16 builder flag")
            if precision == "fp16" else None, "plan_mb": round(plan_path.stat().st_size / 1e6, 3)}
