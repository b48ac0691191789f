"""OpenVINO as a detector runtime, in ONNX Runtime's session shape (`run`, `get_outputs`).

So the evaluator, the in-process detector and the latency benchmark run an ONNX file or an
OpenVINO IR (`.xml`, e.g. Ultralytics' `*_openvino_model/`) through the same code as an ONNX
Runtime session. openvino is imported only here, and only when such a session is made.

Precision is explicit: OpenVINO's CPU default on CPUs with bf16 (AVX-512 BF16, AMX) runs float
layers in bf16, which changes outputs. `precision="f32"` keeps them float32; `precision="default"`
is what Ultralytics' own OpenVINO runtime gets, and what `make openvino` gates and serves (the
precision it resolved to is recorded, and the builder refuses a host that resolves another).

The repository builder copies this file beside the served detector of `RUNTIME=openvino`
(tools/triton_models/onnx_detector.py), so the server runs the session the gate measured: outside
the project its errors are the standard library's.
"""

from __future__ import annotations

from pathlib import Path

try:
    from compress.errors import MissingDependencyError, UnsupportedModelError, require_file
except ImportError:  # inside the served detector: the builder's copy, no compress package
    class MissingDependencyError(ImportError):
        def __init__(self, message: str, hint: str | None = None):
            super().__init__(f"{message} ({hint})" if hint else message)

    class UnsupportedModelError(ValueError):
        def __init__(self, message: str, hint: str | None = None):
            super().__init__(f"{message} ({hint})" if hint else message)

    def require_file(path, what: str = "file"):
        if not Path(path).exists():
            raise FileNotFoundError(f"{what} not found: {path}")
        return Path(path)

PRECISIONS = ("f32", "default")  # float layers: float32, or what OpenVINO picks for the CPU (bf16 where it has it)


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
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        ov = _openvino()
        self.path = require_file(path, "OpenVINO model")
        self.core = ov.Core()
        try:
            self.model = self.core.read_model(str(self.path))
        except Exception as error:  # OpenVINO raises RuntimeError with its own text
            raise UnsupportedModelError(f"{self.path} is not a model OpenVINO can read: {str(error).splitlines()[0]}") from None
        # no pinning: OpenVINO pins each process's threads from core 0 up on Linux, so two served
        # detector instances (two processes) would share one core and leave the other idle
        self.config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "ENABLE_CPU_PINNING": "NO"}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = str(int(threads))
        if precision == "f32":
            self.config["INFERENCE_PRECISION_HINT"] = "f32"
        self.input_name = self.model.inputs[0].get_any_name()
        self.output_names = [_name(o, f"output{i}") for i, o in enumerate(self.model.outputs)]
        # every name an output answers to (the ONNX's tensor name may be one of several)
        self._output_index = {name: i for i, o in enumerate(self.model.outputs) for name in o.get_names()}
        self._output_index.update({name: i for i, name in enumerate(self.output_names)})
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

    def compile_batches(self, batch_sizes) -> None:
        """Compiled ahead for each batch size (a server's first batch of a new size must not wait
        for OpenVINO's compilation)."""
        shape = self._any_shape()
        for batch in batch_sizes:
            self.compiled((int(batch), *shape[1:]))

    def run(self, output_names, feed: dict):
        tensor = feed[self.input_name] if self.input_name in feed else next(iter(feed.values()))
        values = list(self.compiled(tuple(tensor.shape))(tensor).values())
        missing = [name for name in (output_names or []) if name not in self._output_index]
        if missing:
            raise KeyError(f"{self.path} has no output(s) {', '.join(missing)} (it has {', '.join(self.output_names)})")
        return [values[self._output_index[name]] for name in (output_names or self.output_names)]


def precision_here(precision: str) -> str:
    """The float precision OpenVINO's CPU plugin resolves `precision` to on this machine ("f32", "bf16")."""
    if precision == "f32":
        return "f32"
    return _openvino().Core().get_property("CPU", "INFERENCE_PRECISION_HINT").to_string()


def create_openvino_session(path: Path, threads: int = 0, precision: str = "f32") -> OpenVinoSession:
    return OpenVinoSession(Path(path), threads, precision)
