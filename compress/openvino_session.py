"""OpenVINO as a detector runtime, in ONNX Runtime's session shape (`run`, `get_outputs`).

So the evaluator, the in-process detector and the latency benchmark run an ONNX file or an
OpenVINO IR (`.xml`, e.g. Ultralytics' `*_openvino_model/`) through the same code as an ONNX
Runtime session. openvino is imported only here, and only when such a session is made.

Precision is explicit: OpenVINO's CPU default on CPUs with bf16 (AVX-512 BF16, AMX) runs float
layers in bf16, which changes outputs. `precision="f32"` keeps them float32 (what the gate's
comparisons assume); `precision="default"` is what Ultralytics' own OpenVINO runtime gets.
"""

from __future__ import annotations

from pathlib import Path

from compress.errors import MissingDependencyError, UnsupportedModelError, require_file



def _openvino():
    try:
        import openvino
    except ImportError:
        raise MissingDependencyError("OpenVINO is not installed in this environment",
                                     hint="run `make venv` (requirements.lock pins openvino)") from None
    return openvino


def _name(port, fallback: str) -> str:
    try:
        return port.get_any_name()
    except RuntimeError:  # a tensor the converter left unnamed
        return fallback


class _Output:
    def __init__(self, name: str):
        self.name = name


class OpenVinoSession:
    """One model on OpenVINO's CPU plugin, compiled for each input shape it meets (static shapes,
    OpenVINO's fastest path; a batch-1 IR, as Ultralytics exports it, also runs at batch 8)."""

    def __init__(self, path: Path, threads: int = 0, precision: str = "f32"):
        from compress.runtimes import PRECISIONS

        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        ov = _openvino()
        self.path = require_file(path, "OpenVINO model")
        self.core = ov.Core()
        try:
            self.model = self.core.read_model(str(self.path))
        except Exception as error:  # OpenVINO raises RuntimeError with its own text
            raise UnsupportedModelError(f"{self.path} is not a model OpenVINO can read: {str(error).splitlines()[0]}") from None
        self.config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = str(int(threads))
        if precision == "f32":
            self.config["INFERENCE_PRECISION_HINT"] = "f32"
        self.input_name = self.model.inputs[0].get_any_name()
        self.output_names = [_name(o, f"output{i}") for i, o in enumerate(self.model.outputs)]
        self._compiled: dict[tuple[int, ...], object] = {}

    def compiled(self, shape: tuple[int, ...]):
        if shape not in self._compiled:
            model = self.model.clone()
            model.reshape({self.input_name: list(shape)})
            self._compiled[shape] = self.core.compile_model(model, "CPU", self.config)
        return self._compiled[shape]

    def inference_precision(self) -> str:
        """The precision float layers actually run in (what OpenVINO chose, not what was asked)."""
        compiled = next(iter(self._compiled.values()), None) or self.compiled(self._any_shape())
        return compiled.get_property("INFERENCE_PRECISION_HINT").to_string()  # "f32", "bf16", "f16"

    def describe(self) -> dict:
        """Threads, pinning and float precision as the compiled model reports them."""
        compiled = next(iter(self._compiled.values()), None) or self.compiled(self._any_shape())
        facts = {"inference_precision": self.inference_precision(), "providers": ["OpenVINO CPU"]}
        for key, name, kind in (("threads", "INFERENCE_NUM_THREADS", int), ("cpu_pinning", "ENABLE_CPU_PINNING", bool)):
            try:
                facts[key] = kind(compiled.get_property(name))
            except RuntimeError:  # a plugin version without the property
                facts[key] = None
        return facts

    def _any_shape(self) -> tuple[int, ...]:
        shape = self.model.inputs[0].get_partial_shape()
        return tuple(d.get_length() if d.is_static else 1 for d in shape)

    def get_outputs(self) -> list[_Output]:
        return [_Output(name) for name in self.output_names]

    def run(self, output_names, feed: dict):
        tensor = feed[self.input_name] if self.input_name in feed else next(iter(feed.values()))
        results = self.compiled(tuple(tensor.shape))(tensor)
        by_name = dict(zip(self.output_names, results.values()))
        return [by_name[name] for name in (output_names or self.output_names)]


def create_openvino_session(path: Path, threads: int = 0, precision: str = "f32") -> OpenVinoSession:
    return OpenVinoSession(Path(path), threads, precision)
