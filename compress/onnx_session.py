"""The one ONNX Runtime session set-up, used in-process and inside the served detector.

Standard library and onnxruntime only: the repository builder copies this file beside the
Triton Python model of the `local` target, so the server runs the session the benchmarks time.
"""

import os

import onnxruntime as ort

# Short names ORT_PROVIDERS= accepts, as Polygraphy spells them
PROVIDER_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                  "tensorrt": "TensorrtExecutionProvider"}
# Preferred where the installed ONNX Runtime has them (onnxruntime-gpu): CUDA, then the CPU for
# what CUDA does not run. TensorRT's provider needs TensorRT's own libraries: only when asked.
AUTOMATIC = ("CUDAExecutionProvider", "CPUExecutionProvider")


def execution_providers(requested: str | None = None) -> list[str]:
    """The providers sessions run on: `requested` or $ORT_PROVIDERS (comma-separated: cpu, cuda,
    tensorrt or ONNX Runtime's full names), else CUDA where this ONNX Runtime build has it, else
    the CPU. An unknown or unavailable provider is a ValueError naming what is available."""
    available = ort.get_available_providers()
    text = requested if requested is not None else os.environ.get("ORT_PROVIDERS", "")
    if not text.strip():
        return [p for p in AUTOMATIC if p in available]
    chosen = [PROVIDER_NAMES.get(name.strip().lower(), name.strip()) for name in text.split(",") if name.strip()]
    missing = [p for p in chosen if p not in available]
    if missing:
        raise ValueError(f"ONNX Runtime provider(s) {', '.join(missing)} not available here "
                         f"(this build has {', '.join(available)})")
    return chosen


def create_session(path, threads: int = 0, spinning: bool = True, profile_prefix: str | None = None,
                   providers: list[str] | None = None) -> ort.InferenceSession:
    """A session on `providers` (default `execution_providers()`); `threads` 0 lets ONNX Runtime
    decide; `profile_prefix` turns on ONNX Runtime's per-node profiler (trace written by
    `end_profiling()`).

    `spinning=False` stops idle intra-op threads from spin-waiting: needed when several sessions
    share the cores in turn (interleaved benchmarks measured the same model 2x slower with it on).
    """
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), options, providers=providers or execution_providers())
