"""The frames a serving measurement sends: the dataset's own images, camera-sized frames, or the user's.

`FRAMES=dataset` (alias `256`: frames near the model's input size) sends the dataset's val split;
`FRAMES=720p` / `FRAMES=1080p` sends labelled frames of that size, generated once by the dataset
generator into `<artifacts>/frames/<name>/` (JPEG quality 85, as cameras send); any other value is
a folder (or .txt list) of the user's own frames. Every result records the set it measured.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from compress.errors import InputFileError

DATASET_ALIASES = ("dataset", "256")
CAMERA_JPEG_QUALITY = 85
CAMERA_FRAMES = 64  # as many as a load test sends distinct (its first 64); the HD mAP is taken on them
CAMERA_SEED = 1  # not the dataset's seed: these frames were never trained on


@dataclass(frozen=True)
class FrameSet:
    name: str  # dataset, 720p, 1080p or the folder's name
    images: Path  # folder or .txt list, as the load tests and the client take them
    data_yaml: Path | None  # labels, when the set has them (mAP can be measured on it)
    width: int  # median frame size
    height: int
    count: int
    mean_kib: float  # mean encoded size: what each frame costs on the wire

    def label(self) -> str:
        return f"{self.name} ({self.width}x{self.height}, {self.mean_kib:.0f} KiB/frame)"

    def record(self) -> dict:
        return {**asdict(self), "images": str(self.images), "data_yaml": str(self.data_yaml) if self.data_yaml else None}


def camera_frames(name: str, artifacts: Path) -> Path:
    """data.yaml of the labelled camera-sized frame set `name` (720p, 1080p), generated if missing."""
    from compress.dataset import FRAME_SIZES, DatasetSpec, generate

    folder = Path(artifacts) / "frames" / name
    data_yaml = folder / "data.yaml"
    if not data_yaml.exists():
        print(f"==> generating {CAMERA_FRAMES} labelled {name} frames into {folder}", flush=True)
        generate(folder, DatasetSpec(train_images=0, val_images=CAMERA_FRAMES, seed=CAMERA_SEED,
                                     frame=FRAME_SIZES[name], jpeg_quality=CAMERA_JPEG_QUALITY))
        # an evaluation set only: the dataset reader wants a train split, so it names the val one
        config = yaml.safe_load(data_yaml.read_text())
        data_yaml.write_text(yaml.safe_dump({**config, "train": config["val"]}, sort_keys=False))
    return data_yaml


def resolve_frames(frames: str | Path | None, artifacts: Path = Path("artifacts")) -> FrameSet:
    """The frame set named by FRAMES= / --frames (default: the dataset's val split)."""
    from compress.dataset import FRAME_SIZES
    from compress.manifest import Manifest, val_image_list

    text = str(frames) if frames not in (None, "") else "dataset"
    if text in DATASET_ALIASES:
        images, name = val_image_list(artifacts), "dataset"
        data_yaml = Manifest(artifacts).get("dataset").outputs.get("data_yaml")
        data_yaml = Path(artifacts) / data_yaml if data_yaml else None
    elif text in FRAME_SIZES:
        data_yaml = camera_frames(text, artifacts)
        images, name = data_yaml.parent / "images" / "val", text
    else:
        images = Path(text)
        if not images.exists():
            raise InputFileError(f"no frame set or folder {text!r}",
                                 hint=f"use FRAMES= one of {', '.join((*DATASET_ALIASES, *FRAME_SIZES))} or a folder of frames")
        name, data_yaml = images.stem if images.is_file() else images.name, None
        if images.is_dir() and (images / "data.yaml").exists():  # labelled, laid out like the generated sets
            data_yaml = images / "data.yaml"
            images = images / "images" / "val" if (images / "images" / "val").is_dir() else images
    return describe(name, images, data_yaml)


def as_frame_set(frames: "FrameSet | str | Path | None", artifacts: Path = Path("artifacts")) -> FrameSet:
    """A frame set as given, or resolved from its name or folder."""
    return frames if isinstance(frames, FrameSet) else resolve_frames(frames, artifacts)


def _header(path: Path) -> tuple[int, int]:
    from compress.detection import ImageDecodeError, ImageLimits, image_header

    try:
        return image_header(path.read_bytes(), ImageLimits())[:2]
    except ImageDecodeError as error:
        raise ImageDecodeError(f"frame {path}: {error}") from None


def describe(name: str, images: Path, data_yaml: Path | None = None) -> FrameSet:
    """Median size and mean encoded size of the frames a load test would send (its first 64)."""
    import numpy as np

    from tools.client import collect_images

    from compress.detection import ImageDecodeError

    paths = collect_images([images])[:64]
    try:
        sizes = np.array([_header(p) for p in paths])
    except ImageDecodeError as error:
        raise InputFileError(str(error), hint="frames to send must be images the server accepts") from None
    mean_kib = float(np.mean([p.stat().st_size for p in paths])) / 1024
    return FrameSet(name, Path(images), data_yaml, int(np.median(sizes[:, 0])), int(np.median(sizes[:, 1])),
                    len(paths), round(mean_kib, 1))
