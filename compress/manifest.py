"""The artifacts manifest: one JSON entry per stage (inputs' hashes, settings, outputs, metrics).

A stage is up to date when its recorded input hashes and settings equal the current ones and
its outputs still exist; the pipeline then reuses it instead of running it again.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path


def file_hash(path: Path) -> str:
    """sha256 of a file, or of a folder's relative names, sizes and mtimes (cheap for datasets)."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_dir():
        for item in sorted(p for p in path.rglob("*") if p.is_file()):
            stat = item.stat()
            digest.update(f"{item.relative_to(path)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    else:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


@dataclass
class StageRecord:
    stage: str
    inputs: dict[str, str]  # name -> hash
    settings: dict
    outputs: dict[str, str]  # name -> path relative to the artifacts folder
    metrics: dict = field(default_factory=dict)
    seconds: float = 0.0
    finished: str = ""


class Manifest:
    """`artifacts/manifest.json`, read and written whole (small)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.path = self.root / "manifest.json"
        self.records: dict[str, StageRecord] = {}
        if self.path.exists():
            data = json.loads(self.path.read_text())
            self.records = {name: StageRecord(**entry) for name, entry in data.get("stages", {}).items()}

    def get(self, stage: str) -> StageRecord | None:
        return self.records.get(stage)

    def output(self, stage: str, name: str) -> Path:
        record = self.records.get(stage)
        if record is None or name not in record.outputs:
            from compress.errors import InputFileError

            raise InputFileError(f"stage {stage!r} has no output {name!r} yet", hint=f"run the {stage} stage first")
        return self.root / record.outputs[name]

    def is_current(self, stage: str, inputs: dict[str, str], settings: dict) -> bool:
        record = self.records.get(stage)
        if record is None or record.inputs != inputs or record.settings != _jsonable(settings):
            return False
        return all((self.root / rel).exists() for rel in record.outputs.values())

    def record(self, stage: str, inputs: dict[str, str], settings: dict, outputs: dict[str, Path],
               metrics: dict, seconds: float) -> StageRecord:
        entry = StageRecord(
            stage=stage,
            inputs=inputs,
            settings=_jsonable(settings),
            outputs={k: self._relative(v) for k, v in outputs.items()},
            metrics=_jsonable(metrics),
            seconds=round(seconds, 2),
            finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
        )
        self.records[stage] = entry
        self.save()
        return entry

    def _relative(self, path: Path) -> str:
        return relative_to(self.root, path)

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        data = {"stages": {name: asdict(rec) for name, rec in self.records.items()}}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.path)


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


def relative_to(artifacts: Path, path: Path) -> str:
    """Relative to the artifacts folder when inside it (the folder can move), else absolute."""
    path, root = Path(path).resolve(), Path(artifacts).resolve()
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def val_image_list(artifacts: Path) -> Path:
    """The dataset stage's val image list (as the dataset reader resolved it): the frames the demo,
    the load tests and the load-test image send by default."""
    from compress.errors import InputFileError

    record = Manifest(artifacts).get("dataset")
    if record is None or "val_images" not in record.outputs:
        raise InputFileError("no dataset in the artifacts to take frames from", hint="run `make` or pass --images")
    return Path(artifacts) / record.outputs["val_images"]
