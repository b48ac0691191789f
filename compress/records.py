"""The records that cross module boundaries, typed, each with one loader.

    read_json         the records' loaders read through this: a missing or corrupt file is one
                      InputFileError that says which command writes it
    SearchRecord      the search stage's result: the reference it chose, every candidate's files
    ServedChoice      the report's serving decision (report.json's `served`)
    GatedModel        what the parity gate passed (served.json), tied to the file's bytes
    GateVerdicts      candidates the gate refused and the float-kept variants it made instead

Paths inside the records are relative to the artifacts folder (the folder can move); the loaders
hand out absolute ones. Nothing is decoded from a file name, a folder name or a display label.
A record an older version of the toolkit wrote (a field missing) is one error saying what to run.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from compress.budget import Reference
from compress.errors import GateFailedError, InputFileError
from compress.manifest import Manifest, file_hash, relative_to

REPORT_FILE = Path("report") / "report.json"
SERVED_FILE = "served.json"
VERDICTS_FILE = "gate_verdicts.json"
OPENVINO_FILE = Path("openvino") / "openvino.json"


def read_json(path: Path, what: str, hint: str) -> dict:
    """The JSON object in `path`; a missing, unreadable or corrupt file is one readable error
    naming `what` it should hold and (`hint`) the command that writes it."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"no {what} in {path.parent} ({path.name} is missing)", hint=hint)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputFileError(f"{path} is not a readable {what}: {error}", hint=hint) from None
    if not isinstance(data, dict):
        raise InputFileError(f"{path} is not a readable {what}: not a JSON object", hint=hint)
    return data


def older_record(path: Path, error: Exception) -> InputFileError:
    return InputFileError(f"{path} was written by an older version of the toolkit (no {error})",
                          hint="run `make pipeline` to measure and write it again")


def write_json(path: Path, data: dict) -> Path:
    """Written whole through a temporary file: a reader never sees half a record."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)
    return path


# -- the search ----------------------------------------------------------------------------------

CANDIDATE_FILES = ("weights", "fp32", "int8")


@dataclass(frozen=True)
class SearchCandidate:
    """One candidate as the search stage recorded it: its metrics and its files (absolute)."""

    name: str
    metrics: dict
    files: dict[str, Path]

    @property
    def trained(self) -> bool:
        return bool(self.metrics["trained"])

    @property
    def label(self) -> str:
        return self.metrics["label"]


@dataclass(frozen=True)
class SearchRecord:
    reference: Reference
    budget_points: float
    candidates: dict[str, SearchCandidate]
    metrics: dict  # the whole record (probes, log, time spent) for the report

    @classmethod
    def load(cls, manifest: Manifest) -> "SearchRecord":
        record = manifest.get("search")
        if record is None:
            raise InputFileError(f"no search in {manifest.root}", hint="run `make pipeline` first")
        try:
            candidates = {name: SearchCandidate(name, info, {k: manifest.root / rel for k, rel in info["files"].items()})
                          for name, info in record.metrics["candidates"].items()}
            return cls(Reference.from_dict(record.metrics["reference"]), record.metrics["budget_points"], candidates,
                       record.metrics)
        except (KeyError, TypeError) as error:
            raise older_record(manifest.path, error) from None

    @staticmethod
    def candidate_entry(metrics: dict, files: dict[str, Path], root: Path) -> dict:
        """How the search stage records a candidate: its metrics and its files relative to `root`."""
        return {**metrics, "files": {kind: relative_to(root, path) for kind, path in files.items()}}


# -- the report's serving decision -----------------------------------------------------------------

@dataclass(frozen=True)
class ServedChoice:
    """What the report serves and why: the gate judges it, the plan stage builds it, `make repo`
    serves it through the gate's record."""

    name: str  # the candidate's name, or the row key of an FP32 baseline
    key: str  # its row in the report
    model: str  # display label
    precision: str  # int8 | fp32
    onnx: Path
    fp32_onnx: Path  # the FP32 twin it was quantized from (itself for an FP32 row)
    weights: Path
    quantization: dict | None
    rule: str
    budget_points: float
    allow_over_budget: bool
    drop_points: float
    within_budget: bool
    float_convs: list[str] | None = None  # a float-kept variant: the convs it keeps in float beyond its base

    @property
    def image_size(self) -> tuple[int, int]:
        """The input size it was exported for (input size is a search dimension)."""
        from compress.export import read_info

        return read_info(self.onnx).image_size

    @classmethod
    def from_dict(cls, served: dict, artifacts: Path) -> "ServedChoice":
        root = Path(artifacts)
        return cls(served["name"], served["key"], served["model"], served["precision"], root / served["onnx"],
                   root / served["fp32_onnx"], root / served["weights"], served.get("quantization"), served["rule"],
                   served["budget_points"], served["allow_over_budget"], served["drop_points"], served["within_budget"],
                   served.get("mixed_precision"))


@dataclass(frozen=True)
class Report:
    path: Path
    data: dict
    served: ServedChoice

    @classmethod
    def load(cls, artifacts: Path) -> "Report":
        path = Path(artifacts) / REPORT_FILE
        data = read_json(path, "compression report (nothing has been chosen to serve yet)",
                         "run `make pipeline` (or `make bench`) first")
        try:
            return cls(path, data, ServedChoice.from_dict(data["served"], artifacts))
        except (KeyError, TypeError) as error:
            raise older_record(path, error) from None


# -- what the parity gate passed ---------------------------------------------------------------------

@dataclass(frozen=True)
class GatedModel:
    stage: str  # the report's choice the gate passed (a candidate name)
    onnx: Path
    sha256: str
    mixed_precision: bool = False
    gated_at: str = ""
    trt_onnx: Path | None = None  # the symmetric Q/DQ twin the TensorRT INT8 plan was built from
    trt_onnx_sha256: str | None = None
    # the served shadow's reference (the one accuracy is budgeted against) and what the gate saw
    # of it on the val split: agreement and drift signals (tools.agreement.shadow_baseline)
    shadow: dict | None = None
    gate: dict | None = None  # the thresholds it passed under (tools.gate.Gate), for checks of its twins

    @property
    def shadow_reference(self) -> Path | None:
        return self.shadow["reference_onnx"] if self.shadow else None

    @classmethod
    def load(cls, artifacts: Path) -> "GatedModel":
        """The gate's record, checked against the file's current bytes."""
        path = Path(artifacts) / SERVED_FILE
        if not path.exists():
            raise GateFailedError(f"no model in {artifacts} has passed the parity gate",
                                  hint="run `make parity` (or override with ALLOW_UNGATED=1, which serves it unchecked)")
        record = read_json(path, "parity gate record", "run `make parity` again")
        root = Path(artifacts)
        try:
            gated = cls(record["stage"], root / record["onnx"], record["sha256"], record.get("mixed_precision", False),
                        record.get("gated_at", ""), root / record["trt_onnx"] if record.get("trt_onnx") else None,
                        record.get("trt_onnx_sha256"),
                        {**record["shadow"], "reference_onnx": root / record["shadow"]["reference_onnx"]}
                        if record.get("shadow") else None, record.get("gate"))
        except (KeyError, TypeError) as error:
            raise GateFailedError(f"{path} is not a gate record this toolkit wrote (no {error})",
                                  hint="run `make parity` again") from None
        if not gated.onnx.exists() or file_hash(gated.onnx) != gated.sha256:
            raise GateFailedError(f"{gated.onnx} changed since the parity gate passed it (or is gone)",
                                  hint="run `make parity` again on the current artifacts")
        return gated

    @staticmethod
    def record(artifacts: Path, stage: str, onnx: Path, trt_onnx: Path | None = None,
               mixed_precision: bool = False, shadow: dict | None = None, gate: dict | None = None) -> Path:
        """Written by the parity gate alone, tied to the exact bytes it gated."""
        record = {"stage": stage, "onnx": relative_to(artifacts, onnx), "sha256": file_hash(onnx),
                  "mixed_precision": mixed_precision, "gated_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if gate is not None:
            record["gate"] = gate
        if shadow is not None:
            record["shadow"] = {**shadow, "reference_onnx": relative_to(artifacts, shadow["reference_onnx"]),
                                "reference_sha256": file_hash(shadow["reference_onnx"])}
        if trt_onnx is not None:
            record.update(trt_onnx=relative_to(artifacts, trt_onnx), trt_onnx_sha256=file_hash(trt_onnx))
        return write_json(Path(artifacts) / SERVED_FILE, record)

    @staticmethod
    def clear(artifacts: Path) -> None:
        (Path(artifacts) / SERVED_FILE).unlink(missing_ok=True)


# -- the gated model on OpenVINO ---------------------------------------------------------------------

def ir_hash(xml: Path) -> str:
    """An IR's identity: its graph and its weights."""
    return f"{file_hash(xml)}:{file_hash(Path(xml).with_suffix('.bin'))}"


def model_hash(path: Path) -> str:
    """A served file's identity: its bytes, an OpenVINO IR's graph and weights."""
    return ir_hash(path) if Path(path).suffix == ".xml" else file_hash(path)


@dataclass
class OpenVinoModel:
    """`make openvino`'s record (tools.openvino_gate): the gated model's OpenVINO twin, whether the
    parity gate's checks passed on it, and its end-to-end speed beside the gated ONNX Runtime file
    (measured side by side: {"bs1": x, "bs8": y}, above 1 is faster on OpenVINO; `speedup_p10`
    the low end of each one's bootstrap interval)."""

    xml: Path
    ir_sha256: str
    gated_sha256: str  # the gated ONNX it is the twin of
    precision: str  # the float layers' precision asked for when gated and served (compress.runtimes)
    inference_precision: str  # what OpenVINO resolved it to on the gating machine ("f32", "bf16")
    passed: bool
    speedup: dict
    speedup_p10: dict
    shadow: dict | None = None  # the shadow baseline of the IR (tools.agreement.shadow_baseline)

    @property
    def faster(self) -> bool:
        """Faster than ONNX Runtime at every batch size measured, beyond the noise (the low end of
        each interval above 1)."""
        return bool(self.speedup_p10) and all(value > 1.0 for value in self.speedup_p10.values())

    @classmethod
    def load(cls, artifacts: Path, gated: "GatedModel") -> "OpenVinoModel":
        """The record, checked against the gate's current choice and the IR's bytes."""
        path = Path(artifacts) / OPENVINO_FILE
        if not path.exists():
            raise GateFailedError(f"the gated model has no OpenVINO twin in {artifacts}",
                                  hint="run `make openvino` (it quantizes, gates and times it)")
        record = read_json(path, "OpenVINO record", "run `make openvino` again")
        try:
            model = cls(Path(artifacts) / record["xml"], record["ir_sha256"], record["gated_sha256"], record["precision"],
                        record["inference_precision"], bool(record["passed"]), dict(record["speedup"]),
                        dict(record["speedup_p10"]), record.get("shadow"))
        except (KeyError, TypeError) as error:
            raise GateFailedError(f"{path} is not a record `make openvino` wrote (no {error})",
                                  hint="run `make openvino` again") from None
        if model.gated_sha256 != gated.sha256:
            raise GateFailedError(f"{path} is the OpenVINO twin of another model than the one the gate passed now",
                                  hint="run `make openvino` again after `make parity`")
        if not model.xml.exists() or not model.xml.with_suffix(".bin").exists() or ir_hash(model.xml) != model.ir_sha256:
            raise GateFailedError(f"{model.xml} changed since `make openvino` gated it (or is gone)",
                                  hint="run `make openvino` again")
        return model

    @staticmethod
    def record(artifacts: Path, xml: Path, gated: "GatedModel", precision: str, inference_precision: str,
               passed: bool, speedup: dict, speedup_p10: dict, measured: dict, shadow: dict | None = None) -> Path:
        record = {"xml": relative_to(artifacts, xml), "ir_sha256": ir_hash(xml), "gated_sha256": gated.sha256,
                  "gated_stage": gated.stage, "precision": precision, "inference_precision": inference_precision,
                  "passed": passed, "speedup": speedup, "speedup_p10": speedup_p10, "shadow": shadow,
                  "measured": measured, "written_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        return write_json(Path(artifacts) / OPENVINO_FILE, record)


# -- what the gate refused, and the variants it made ------------------------------------------------

@dataclass
class GateVerdicts:
    """Candidates the parity gate refused (the report never serves them again while their file is
    unchanged) and the float-kept variants it made for them (the report measures those like any
    candidate). Kept for one set of gate thresholds: other thresholds judge afresh."""

    gate: dict = field(default_factory=dict)
    refused: dict[str, dict] = field(default_factory=dict)  # {candidate: {"sha256", "failed"}}
    variants: dict[str, str] = field(default_factory=dict)  # {variant name: its candidate.json, relative}

    @classmethod
    def load(cls, artifacts: Path, gate: dict | None = None) -> "GateVerdicts":
        """The record, or an empty one where none exists or (`gate` given) it judged with other thresholds."""
        path = Path(artifacts) / VERDICTS_FILE
        if not path.exists():
            return cls(gate=gate or {})
        record = read_json(path, "parity gate verdicts", "delete it and run `make parity` again")
        verdicts = cls(record.get("gate", {}), record.get("refused", {}), record.get("variants", {}))
        if gate is not None and verdicts.gate != json.loads(json.dumps(gate)):
            return cls(gate=gate)
        return verdicts

    def save(self, artifacts: Path) -> Path:
        return write_json(Path(artifacts) / VERDICTS_FILE, asdict(self))

    def refused_keys(self, files: dict[str, Path]) -> frozenset[str]:
        """Names among `files` ({candidate: its INT8 file}) refused while their file is unchanged."""
        return frozenset(name for name, entry in self.refused.items()
                         if name in files and files[name].exists() and file_hash(files[name]) == entry["sha256"])

    @staticmethod
    def path(artifacts: Path) -> Path:
        return Path(artifacts) / VERDICTS_FILE
