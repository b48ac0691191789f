"""Stage `plan`: TensorRT FP16 and INT8 engine plans, built where `tensorrt` imports.

Built from the served candidate (the report's choice), with Polygraphy's TensorRT loaders:
- INT8: a strongly-typed network from a symmetric Q/DQ ONNX of the served model's FP32 twin
  (same calibration and float layers): precisions come from the Q/DQ nodes, not from builder
  flags or calibrators.
- FP16: the FP32 twin with the FP16 builder flag.
- One optimization profile covers batch 1..max (optimum at the preferred batch); a timing
  cache is read and written so rebuilds are fast; the TensorRT version is recorded, since a
  plan only runs on the TensorRT version (and GPU) it was built with.

Nothing here runs without TensorRT: `tensorrt_version()` returns None, and the stage records
itself as skipped with that reason (TensorRT ships in the NGC TensorRT / Triton containers).
"""

from __future__ import annotations

from pathlib import Path

from compress.errors import MissingDependencyError, UnsupportedModelError

NO_TENSORRT = ("TensorRT is not installed here (it cannot be pip-installed on these machines); "
               "run `make plan` inside an NGC TensorRT or Triton container on a GPU machine")


def tensorrt_version() -> str | None:
    try:
        import tensorrt
    except ImportError:
        return None
    return tensorrt.__version__


def build_plan(onnx_path: Path, plan_path: Path, precision: str, image_size: tuple[int, int], max_batch: int = 16,
               opt_batch: int = 8, timing_cache: Path | None = None, workspace_gib: float = 2.0) -> dict:
    """Build one serialized engine with Polygraphy's TensorRT loaders; returns its build facts."""
    if tensorrt_version() is None:
        raise MissingDependencyError(NO_TENSORRT)
    if precision not in ("int8", "fp16"):
        raise UnsupportedModelError(f"precision must be int8 or fp16, not {precision!r}")
    import tensorrt as trt
    from polygraphy.backend.trt import CreateConfig, EngineFromNetwork, NetworkFromOnnxPath, Profile, SaveEngine

    height, width = image_size
    # INT8 comes from the Q/DQ nodes (a strongly-typed network), not from builder flags or calibrators.
    network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=precision == "int8")
    profile = Profile().add("images", min=(1, 3, height, width), opt=(min(opt_batch, max_batch), 3, height, width),
                            max=(max_batch, 3, height, width))
    cache = str(timing_cache) if timing_cache else None
    config = CreateConfig(fp16=precision == "fp16" or None, profiles=[profile],
                          load_timing_cache=cache if timing_cache and timing_cache.exists() else None,
                          memory_pool_limits={trt.MemoryPoolType.WORKSPACE: int(workspace_gib * (1 << 30))})
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        SaveEngine(EngineFromNetwork(network, config, save_timing_cache=cache), path=str(plan_path))()
    except Exception as error:  # Polygraphy raises its own PolygraphyException with TensorRT's parser/builder log
        raise UnsupportedModelError(f"TensorRT failed to build a {precision} engine from {onnx_path}: {error}") from None
    return {"precision": precision, "tensorrt_version": trt.__version__, "max_batch": max_batch,
            "plan_mb": round(plan_path.stat().st_size / 1e6, 3)}
