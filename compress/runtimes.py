"""The runtimes a detector file can run on in-process, behind one session shape.

`onnxruntime` (the served default; compress/onnx_session.py) or `openvino`
(compress/openvino_session.py, float layers at `precision`). Both sessions answer
`run(None, {"images": batch})` and `get_outputs()`, so the evaluator, the in-process detector and
the latency benchmark take either without knowing which.
"""

from __future__ import annotations

from pathlib import Path

from compress.openvino_session import PRECISIONS  # noqa: F401  (re-exported; openvino itself is imported lazily)

RUNTIMES = ("onnxruntime", "openvino")


def create_runtime_session(path: Path, runtime: str = "onnxruntime", threads: int = 0, precision: str = "f32",
                           spinning: bool = True):
    from compress.errors import require_file

    require_file(path, "ONNX model" if Path(path).suffix == ".onnx" else "model file")
    if runtime == "onnxruntime":
        from compress.onnx_session import create_session

        return create_session(path, threads, spinning=spinning)
    if runtime == "openvino":
        from compress.openvino_session import create_openvino_session

        return create_openvino_session(path, threads, precision)
    raise ValueError(f"runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")


def session_facts(session) -> dict:
    """What a session runs with, read back from the runtime (not what was asked for)."""
    if hasattr(session, "describe"):
        return session.describe()
    options = session.get_session_options()
    return {"threads": options.intra_op_num_threads, "providers": session.get_providers()}
