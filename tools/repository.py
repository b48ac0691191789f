"""`repository.json`: what a built model repository serves and how, with its one loader.

Written by the repository builder (tools.build_repo) and by `make tune` (tuned settings);
read by everything that serves, measures or ships a built repository. "Is the repository
built?" is this loader: a repository without its record, or with a record that does not
parse, is one InputFileError that says to run `make repo`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from compress.errors import InputFileError
from compress.records import model_hash, read_json, write_json
from tools import triton_config as tc

RECORD_FILE = "repository.json"
NOT_BUILT_HINT = "run `make repo` (or `make`) first"


@dataclass(frozen=True)
class RepositoryRecord:
    repo: Path
    stage: str  # what the detector serves: a candidate name, a pipeline stage, "user" or "plan"
    target: str
    source: Path  # the gated (or named) model file the detector's file was made from
    gated: bool
    model_sha256: str  # of `source`
    served_sha256: str  # of what the detector loads (differs from source by the uint8 prefix)
    settings: tc.RepositorySettings
    tuned: dict | None = None  # `make tune`'s measurement, when its settings are the ones written
    extra: dict = field(default_factory=dict)  # other provenance (naive: True for bench-serving's)

    @classmethod
    def load(cls, repo: Path) -> "RepositoryRecord":
        repo = Path(repo)
        data = read_json(repo / RECORD_FILE, f"built model repository ({repo} has not been built)", NOT_BUILT_HINT)
        known = {"stage", "target", "source", "gated", "model_sha256", "served_sha256", "settings", "tuned"}
        try:
            settings = tc.RepositorySettings(**data["settings"])
            return cls(repo, data["stage"], data["target"], Path(data["source"]), bool(data.get("gated", False)),
                       data["model_sha256"], data["served_sha256"], settings, data.get("tuned"),
                       {k: v for k, v in data.items() if k not in known})
        except (KeyError, TypeError) as error:
            raise InputFileError(f"{repo / RECORD_FILE} is not a repository record this toolkit wrote ({error})",
                                 hint=NOT_BUILT_HINT) from None

    def save(self) -> Path:
        data = {**self.extra, "stage": self.stage, "target": self.target, "source": str(self.source),
                "gated": self.gated, "model_sha256": self.model_sha256, "served_sha256": self.served_sha256,
                "settings": json.loads(json.dumps(asdict(self.settings), default=list))}
        if self.tuned:
            data["tuned"] = self.tuned
        return write_json(self.repo / RECORD_FILE, data)

    def with_settings(self, settings: tc.RepositorySettings, tuned: dict | None) -> "RepositoryRecord":
        return replace(self, settings=settings, tuned=tuned)

    @property
    def detector_file(self) -> Path:
        """The file the served detector loads."""
        return self.repo / tc.DETECTOR / "1" / self.settings.detector_file_name

    def source_unchanged(self) -> Path:
        """The gated model file, checked against the bytes the repository was built from."""
        if not self.source.is_file() or model_hash(self.source) != self.model_sha256:
            raise InputFileError(f"{self.repo}'s model file {self.source} is missing or changed since the repository "
                                 "was built", hint="run `make repo` again")
        return self.source

    def servable_here(self) -> str | None:
        """None if the local server can serve this repository, else why not."""
        if self.target == "local":
            return None
        if self.target == "tensorrt":
            from compress.plan import NO_TENSORRT

            return NO_TENSORRT
        return "the onnxruntime backend exists only in the NGC tritonserver container"

    def in_process_detector(self, reduced_decode: bool | None = None, threads: int = 0):
        """The deployed model in-process with the deployed configuration: thresholds, max
        detections, decode (`reduced_decode` overrides it), pixels as the detector takes them."""
        from compress.local_detector import LocalDetector

        s = self.settings
        return LocalDetector(self.detector_file, conf_threshold=s.conf_threshold, iou_threshold=s.iou_threshold,
                             max_det=s.max_det, threads=threads, runtime=s.runtime, precision=s.openvino_precision,
                             reduced_decode=s.reduced_decode if reduced_decode is None else reduced_decode)
