"""Stage `plan`: TensorRT FP16 and INT8 engine plans, built where `tensorrt` imports.

- INT8: a strongly-typed network from the symmetric Q/DQ ONNX (the quantize stage's `trt`
  variant): precisions come from the Q/DQ nodes, not from builder flags or calibrators.
- FP16: the float ONNX with the FP16 builder flag.
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
    """Build one serialized engine; returns its build facts."""
    try:
        import tensorrt as trt
    except ImportError:
        raise MissingDependencyError(NO_TENSORRT) from None
    if precision not in ("int8", "fp16"):
        raise UnsupportedModelError(f"precision must be int8 or fp16, not {precision!r}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if precision == "int8":
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UnsupportedModelError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    height, width = image_size
    profile = builder.create_optimization_profile()
    name = network.get_input(0).name
    profile.set_shape(name, (1, 3, height, width), (min(opt_batch, max_batch), 3, height, width),
                      (max_batch, 3, height, width))
    config.add_optimization_profile(profile)
    cache_bytes = timing_cache.read_bytes() if timing_cache and timing_cache.exists() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UnsupportedModelError(f"TensorRT failed to build a {precision} engine from {onnx_path}")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(serialized))
    if timing_cache:
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {"precision": precision, "tensorrt_version": trt.__version__, "max_batch": max_batch,
            "plan_mb": round(plan_path.stat().st_size / 1e6, 3)}
