"""The synthetic dataset is deterministic and well-formed; the manifest detects staleness."""

from __future__ import annotations

import yaml

from compress.dataset import CLASS_NAMES, DatasetSpec, generate
from compress.manifest import Manifest, file_hash


def test_dataset_is_deterministic_and_valid(tmp_path):
    spec = DatasetSpec(train_images=6, val_images=3, image_size=96, seed=3)
    a = generate(tmp_path / "a", spec)
    generate(tmp_path / "b", spec)
    data = yaml.safe_load(a.read_text())
    assert data["names"] == dict(enumerate(CLASS_NAMES))
    for split, count in (("train", 6), ("val", 3)):
        images = sorted((tmp_path / "a" / "images" / split).glob("*.jpg"))
        assert len(images) == count
        for image in images:
            twin = tmp_path / "b" / "images" / split / image.name
            assert image.read_bytes() == twin.read_bytes()
            label = tmp_path / "a" / "labels" / split / f"{image.stem}.txt"
            rows = [line.split() for line in label.read_text().splitlines() if line]
            assert rows, f"{label} has no objects"
            for cls, *box in rows:
                assert 0 <= int(cls) < len(CLASS_NAMES)
                assert all(0 <= float(v) <= 1 for v in box)


def test_manifest_currency(tmp_path):
    out = tmp_path / "stage" / "out.txt"
    out.parent.mkdir()
    out.write_text("x")
    manifest = Manifest(tmp_path)
    manifest.record("stage", {"in": "abc"}, {"k": 1}, {"out": out}, {"m": 0.5}, 1.0)
    reloaded = Manifest(tmp_path)
    assert reloaded.is_current("stage", {"in": "abc"}, {"k": 1})
    assert not reloaded.is_current("stage", {"in": "abd"}, {"k": 1})
    assert not reloaded.is_current("stage", {"in": "abc"}, {"k": 2})
    out.unlink()
    assert not reloaded.is_current("stage", {"in": "abc"}, {"k": 1})
    assert reloaded.output("stage", "out") == out


def test_file_hash_changes_with_content(tmp_path):
    path = tmp_path / "f"
    path.write_text("a")
    first = file_hash(path)
    path.write_text("b")
    assert file_hash(path) != first
