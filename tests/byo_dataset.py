"""A small 'bring your own data' dataset shaped unlike the generated one.

Aerial-looking tiles (textured ground, a road, one class of vehicles seen from above), of
three non-square sizes, listed in .txt files, with a relative `path:` in the yaml and names
as a list: the layout a user exporting from a labelling tool often has.

    python -m tests.byo_dataset build/aerial --train 37 --val 11
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import cv2
import numpy as np

SIZES = ((400, 400), (400, 299), (400, 235), (300, 400))  # width, height


def _ground(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    base = rng.integers(60, 140, size=(3, 3, 3)).astype(np.uint8)
    image = cv2.resize(base, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    image += rng.normal(0, 10, size=image.shape)
    if rng.random() < 0.7:  # a road across the tile
        y = int(rng.integers(0, height))
        cv2.line(image, (0, y), (width, int(rng.integers(0, height))), (70, 70, 75), int(rng.integers(18, 40)))
    return np.clip(image, 0, 255).astype(np.uint8)


def render_tile(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, list[tuple]]:
    image = _ground(rng, width, height)
    labels = []
    for _ in range(int(rng.integers(1, 6))):
        length, breadth = float(rng.uniform(38, 70)), float(rng.uniform(18, 30))
        angle = float(rng.uniform(0, math.pi))
        cx, cy = float(rng.uniform(40, width - 40)), float(rng.uniform(40, height - 40))
        box = cv2.boxPoints(((cx, cy), (length, breadth), math.degrees(angle)))
        colour = tuple(int(c) for c in rng.choice([[230, 230, 230], [30, 30, 160], [40, 40, 40], [200, 60, 30]]))
        cv2.fillPoly(image, [np.round(box).astype(np.int32)], colour, cv2.LINE_AA)
        cv2.polylines(image, [np.round(box).astype(np.int32)], True, (15, 15, 15), 2, cv2.LINE_AA)
        x1, y1 = np.clip(box.min(0), 0, [width - 1, height - 1])
        x2, y2 = np.clip(box.max(0), 0, [width - 1, height - 1])
        labels.append((0, (x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height))
    return image, labels


def make(root: Path, train: int = 37, val: int = 11, seed: int = 3) -> Path:
    """Write the tiles, labels, train.txt/val.txt and data.yaml (relative path); returns data.yaml."""
    import yaml

    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        listed = []
        for index in range(count):
            width, height = SIZES[index % len(SIZES)]
            image, labels = render_tile(rng, width, height)
            name = f"tile_{split}_{index:03d}"
            cv2.imwrite(str(root / "images" / split / f"{name}.png"), image)
            (root / "labels" / split / f"{name}.txt").write_text(
                "".join(f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in labels))
            listed.append(f"./images/{split}/{name}.png")
        (root / f"{split}.txt").write_text("\n".join(listed) + "\n")
    data_yaml = root / "config" / "data.yaml"
    data_yaml.parent.mkdir(exist_ok=True)
    # `path` relative to the yaml's folder; splits as .txt lists; names as a list
    data_yaml.write_text(yaml.safe_dump({"path": "..", "train": "train.txt", "val": "val.txt", "names": ["vehicle"]},
                                        sort_keys=False))
    return data_yaml


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--train", type=int, default=37)
    parser.add_argument("--val", type=int, default=11)
    args = parser.parse_args(argv)
    print(make(args.root, args.train, args.val))


if __name__ == "__main__":
    main()
