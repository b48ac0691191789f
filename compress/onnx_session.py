"""The one ONNX Runtime CPU session set-up, used in-process and inside the served detector.

Standard library and onnxruntime only: the repository builder copies this file beside the
Triton Python model of the `local` target, so the server runs the session the benchmarks time.
"""

import onnxruntime as ort


def create_session(path, threads: int = 0, spinning: bool = True, profile_prefix: str | None = None) -> ort.InferenceSession:
    """A CPU session; `threads` 0 lets ONNX Runtime decide; `profile_prefix` turns on ONNX
    Runtime's per-node profiler (trace written by `end_profiling()`).

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
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
