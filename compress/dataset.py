"""Stage `dataset`: a deterministic synthetic detection dataset in Ultralytics format.

Solid shapes of a few classes on textured, noisy backgrounds. Sized so a YOLOv8n learns it
from scratch on two CPU cores in minutes, yet not trivially: objects vary in size, colour,
aspect and rotation, overlap a little, and backgrounds carry distractor clutter.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

from compress.progress import progress

CLASS_NAMES = ("circle", "square", "triangle", "cross")
# Camera frame sizes (width, height) the serving measurements use besides the dataset's own.
FRAME_SIZES = {"480p": (640, 480), "720p": (1280, 720), "1080p": (1920, 1080)}


@dataclass(frozen=True)
class DatasetSpec:
    train_images: int = 320
    val_images: int = 80
    image_size: int = 320
    max_objects: int = 5
    seed: int = 0
    # (width, height) of camera-like frames instead of image_size squares: objects keep the same
    # size relative to the long side, so the letterboxed model input sees the sizes it learnt.
    frame: tuple[int, int] | None = None
    jpeg_quality: int = 92

    @property
    def width_height(self) -> tuple[int, int]:
        return self.frame or (self.image_size, self.image_size)


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Smooth colour gradient plus noise and thin distractor lines (not objects)."""
    base = rng.integers(0, 256, size=(2, 2, 3)).astype(np.uint8)
    image = cv2.resize(base, (width, height), interpolation=cv2.INTER_LINEAR)
    if width == height:
        noise = rng.normal(0, 12, size=(height, width, 3))
    else:
        noise = _camera_noise(rng, width, height)
    image = np.clip(image.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    # a scalar bound for squares keeps the default dataset's random stream (and so its images) as it was
    bound = width if width == height else np.array([width, height])
    for _ in range(int(rng.integers(0, 4))):
        p1 = tuple(int(v) for v in rng.integers(0, bound, 2))
        p2 = tuple(int(v) for v in rng.integers(0, bound, 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.line(image, p1, p2, colour, 1, cv2.LINE_AA)
    return image


# The grain of the square training images at the scale the model sees them; camera frames carry
# it at the same scale (so the letterboxed input looks like what the model learnt) plus a light
# per-pixel sensor noise. Per-pixel grain of the same strength over 2 MP made 1080p JPEGs of twice
# the bytes a camera's ISP-denoised frames take at the same quality.
GRAIN_SIDE = 320
SENSOR_NOISE = 3.0


def _camera_noise(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    scale = max(width, height) / GRAIN_SIDE
    grain = rng.normal(0, 12, size=(max(1, round(height / scale)), max(1, round(width / scale)), 3))
    grain = cv2.resize(grain.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    return grain + rng.normal(0, SENSOR_NOISE, size=(height, width, 3)).astype(np.float32)


def _contrasting_colour(rng: np.random.Generator, background: np.ndarray) -> tuple[int, int, int]:
    mean = background.reshape(-1, 3).mean(axis=0)
    for _ in range(20):
        colour = rng.integers(0, 256, 3)
        if np.abs(colour - mean).sum() > 180:
            break
    return tuple(int(c) for c in colour)


def _shape_polygon(cls: int, cx: float, cy: float, w: float, h: float, angle: float) -> np.ndarray | None:
    """Polygon of a class shape; None for the circle (drawn as an ellipse)."""
    if cls == 0:
        return None
    if cls == 1:
        pts = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])
    elif cls == 2:
        pts = np.array([[0.0, -0.5], [0.5, 0.5], [-0.5, 0.5]])
    else:
        t = 0.17
        pts = np.array([[-t, -0.5], [t, -0.5], [t, -t], [0.5, -t], [0.5, t], [t, t], [t, 0.5],
                        [-t, 0.5], [-t, t], [-0.5, t], [-0.5, -t], [-t, -t]])
    pts = pts * np.array([w, h])
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return pts @ rot.T + np.array([cx, cy])


def render_image(rng: np.random.Generator, spec: DatasetSpec) -> tuple[np.ndarray, list[tuple[int, float, float, float, float]]]:
    """One image and its labels as (class, cx, cy, w, h) normalised to 0..1."""
    width, height = spec.width_height
    size = max(width, height)  # objects scale with the long side
    image = _background(rng, width, height)
    labels: list[tuple[int, float, float, float, float]] = []
    placed: list[tuple[float, float, float, float]] = []
    for _ in range(int(rng.integers(1, spec.max_objects + 1))):
        for _attempt in range(10):
            cls = int(rng.integers(0, len(CLASS_NAMES)))
            w = float(rng.uniform(0.1, 0.35) * size)
            h = w * float(rng.uniform(0.75, 1.33))
            cx = float(rng.uniform(w / 2, width - w / 2))
            cy = float(rng.uniform(h / 2, height - h / 2))
            angle = float(rng.uniform(-0.35, 0.35)) if cls else 0.0
            poly = _shape_polygon(cls, cx, cy, w, h, angle)
            if poly is None:
                x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
            else:
                x1, y1 = poly.min(axis=0)
                x2, y2 = poly.max(axis=0)
            x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, width - 1), min(y2, height - 1)
            if all(_overlap(x1, y1, x2, y2, *other) < 0.2 for other in placed):
                break
        else:
            continue
        colour = _contrasting_colour(rng, image[int(y1):int(y2) + 1, int(x1):int(x2) + 1])
        if poly is None:
            cv2.ellipse(image, (round(cx), round(cy)), (round(w / 2), round(h / 2)), 0, 0, 360, colour, -1, cv2.LINE_AA)
        else:
            cv2.fillPoly(image, [np.round(poly).astype(np.int32)], colour, cv2.LINE_AA)
        placed.append((x1, y1, x2, y2))
        labels.append((cls, (x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height))
    return image, labels


def _overlap(ax1, ay1, ax2, ay2, bx1, by1, bx2, by2) -> float:
    """Intersection over the smaller box: keeps shapes from hiding each other."""
    iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    ih = max(0.0, min(ay2, by2) - max(ay1, by1))
    smaller = min((ax2 - ax1) * (ay2 - ay1), (bx2 - bx1) * (by2 - by1))
    return iw * ih / max(smaller, 1e-9)


def generate(out_dir: Path, spec: DatasetSpec = DatasetSpec()) -> Path:
    """Write images/{train,val}, labels/{train,val} and data.yaml; returns data.yaml."""
    out_dir = Path(out_dir)
    rng = np.random.default_rng(spec.seed)
    for split, count in (("train", spec.train_images), ("val", spec.val_images)):
        (out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
        (out_dir / "labels" / split).mkdir(parents=True, exist_ok=True)
        for index in progress(range(count), desc=f"dataset {split}"):
            image, labels = render_image(rng, spec)
            stem = f"{split}_{index:05d}"
            cv2.imwrite(str(out_dir / "images" / split / f"{stem}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, spec.jpeg_quality])
            lines = [f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}" for c, x, y, w, h in labels]
            (out_dir / "labels" / split / f"{stem}.txt").write_text("\n".join(lines) + "\n")
    data_yaml = out_dir / "data.yaml"
    data_yaml.write_text(yaml.safe_dump({
        "path": str(out_dir.resolve()),
        "train": "images/train",
        "val": "images/val",
        "names": dict(enumerate(CLASS_NAMES)),
    }, sort_keys=False))
    return data_yaml


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--train", type=int, default=DatasetSpec.train_images)
    parser.add_argument("--val", type=int, default=DatasetSpec.val_images)
    parser.add_argument("--imgsz", type=int, default=DatasetSpec.image_size)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frame", choices=sorted(FRAME_SIZES), help="camera-sized frames instead of --imgsz squares")
    parser.add_argument("--quality", type=int, default=DatasetSpec.jpeg_quality, help="JPEG quality")
    args = parser.parse_args(argv)
    print(generate(args.out_dir, DatasetSpec(args.train, args.val, args.imgsz, seed=args.seed,
                                             frame=FRAME_SIZES.get(args.frame), jpeg_quality=args.quality)))


if __name__ == "__main__":
    main()
