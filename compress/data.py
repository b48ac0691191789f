"""The one reader of Ultralytics dataset yamls: every stage, the demo and the load test use it.

Resolution is Ultralytics' own (`check_det_dataset` for keys, names and paths, the dataset
loader's `get_img_files` for folders, `.txt` image lists and lists of either), with one
addition: a relative `path:` is first tried against the yaml's own folder, which is what a
yaml shipped inside its dataset means (Ultralytics alone tries the working directory, then
its datasets dir). `resolved_yaml()` writes the result with absolute paths, so the trainer,
the validator and this toolkit all read exactly the same files.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from compress.errors import InputFileError

SPLITS = ("train", "val")


@dataclass(frozen=True)
class Dataset:
    source: Path  # the yaml as given
    root: Path
    names: dict[int, str]
    split_specs: dict[str, str | list[str]]  # absolute folder / txt / list, as resolved
    images: dict[str, list[Path]]

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def split(self, name: str) -> list[Path]:
        return self.images[name]

    def content_hash(self) -> str:
        """Changes when any image or label file of train/val is added, removed or rewritten."""
        from ultralytics.data.utils import img2label_paths

        digest = hashlib.sha256(repr(sorted(self.names.items())).encode())
        for split in SPLITS:
            images = self.images[split]
            for path in [*images, *map(Path, img2label_paths([str(p) for p in images]))]:
                stat = path.stat() if path.exists() else None
                digest.update(f"{split}:{path}:{stat.st_size if stat else -1}:{stat.st_mtime_ns if stat else -1}\n"
                              .encode())
        return digest.hexdigest()[:16]

    def resolved_yaml(self, path: Path) -> Path:
        """An equivalent data.yaml with absolute paths only (what training and validation read)."""
        import yaml

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump({"path": str(self.root), **self.split_specs, "names": self.names},
                                       sort_keys=False))
        return path

    def write_image_list(self, split: str, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{p}\n" for p in self.images[split]))
        return path


def _clean(message, replace: tuple[str, str] = ("", "")) -> str:
    """Ultralytics' messages carry emojis and span lines: one ASCII line, naming the user's file."""
    text = str(message).replace(*replace) if replace[0] else str(message)
    text = re.sub(r"[^\x00-\x7f]+", "", text)
    text = " ".join(line.strip() for line in text.splitlines() if line.strip() and "download directory" not in line)
    return re.sub(r"\s+\.", ".", text) or "unreadable dataset yaml"


def _with_yaml_relative_root(data_yaml: Path, tmp: Path) -> Path:
    """The yaml itself, or a copy whose relative `path:` is made absolute against the yaml's folder."""
    import yaml

    try:
        data = yaml.safe_load(data_yaml.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise InputFileError(f"{data_yaml} is not valid YAML: {_clean(error)}") from None
    if not isinstance(data, dict):
        raise InputFileError(f"{data_yaml} is not a dataset yaml (expected keys path/train/val/names)")
    root = data.get("path")
    if root and not Path(root).is_absolute() and (data_yaml.parent / root).exists():
        data["path"] = str((data_yaml.parent / root).resolve())
    elif not root:
        data["path"] = str(data_yaml.parent.resolve())
    copy = tmp / data_yaml.name
    copy.write_text(yaml.safe_dump(data, sort_keys=False))
    return copy


def _image_files(spec: str | list[str], split: str, data_yaml: Path) -> list[Path]:
    import logging

    from ultralytics.data.base import BaseDataset
    from ultralytics.utils import LOGGER

    reader = SimpleNamespace(prefix="", fraction=1.0)
    level = LOGGER.level
    LOGGER.setLevel(logging.WARNING)  # its file-speed check logs a line per call
    try:
        files = BaseDataset.get_img_files(reader, spec)
    except FileNotFoundError:
        shown = spec if isinstance(spec, str) else ", ".join(spec)
        raise InputFileError(f"{data_yaml}: no {split} images found in {shown}",
                             hint="folders of images, .txt image lists or lists of either, as Ultralytics reads them")
    finally:
        LOGGER.setLevel(level)
    return [Path(f) for f in files]


def load(data_yaml: Path) -> Dataset:
    """Read and check a dataset yaml; raises InputFileError with one readable line."""
    import tempfile

    from ultralytics.data.utils import check_det_dataset

    data_yaml = Path(data_yaml)
    if not data_yaml.is_file():
        raise InputFileError(f"dataset yaml not found: {data_yaml}")
    if data_yaml.suffix not in (".yaml", ".yml"):
        raise InputFileError(f"{data_yaml} is not a data.yaml", hint="pass an Ultralytics dataset yaml with DATA=")
    with tempfile.TemporaryDirectory() as tmp:
        copy = _with_yaml_relative_root(data_yaml, Path(tmp))
        try:
            data = check_det_dataset(str(copy), autodownload=False)
        except (SyntaxError, TypeError, FileNotFoundError, KeyError, ValueError) as error:
            raise InputFileError(_clean(error, (str(copy), str(data_yaml))),
                                 hint="see https://docs.ultralytics.com/datasets/detect/ for the layout") from None
    specs = {split: data[split] for split in SPLITS}
    images = {split: _image_files(spec, split, data_yaml) for split, spec in specs.items()}
    return Dataset(source=data_yaml, root=Path(data["path"]).resolve(), names=dict(data["names"]), split_specs=specs,
                   images=images)


def suggest_imgsz(dataset: Dataset, cap: int, sample: int = 64) -> int:
    """Training size for user data: the images' typical long side rounded up to a stride of 32,
    within [64, cap]. Upscaling small tiles buys no detail and costs CPU time."""
    import numpy as np
    from PIL import Image

    images = dataset.split("train")
    step = max(1, len(images) // sample)
    sides = []
    for path in images[::step][:sample]:
        with Image.open(path) as image:
            sides.append(max(image.size))
    typical = int(np.median(sides)) if sides else cap
    return int(min(cap, max(64, -(-typical // 32) * 32)))
