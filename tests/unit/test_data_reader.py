"""The one dataset reader: every yaml layout Ultralytics accepts resolves to the same files,
the content hash follows the files (not the yaml text), and bad yamls give one readable line."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import yaml

from compress import data
from compress.errors import InputFileError
from compress.evaluate import val_split
from compress.quantize import ImageCalibrationReader, equal_batch_size
from tests import byo_dataset


@pytest.fixture(scope="module")
def aerial(tmp_path_factory):
    """7 train / 3 val non-square tiles, one class, txt lists, relative `path: ..`."""
    return byo_dataset.make(tmp_path_factory.mktemp("aerial"), train=7, val=3)


def write_yaml(path, content: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def layouts(root, tmp_path) -> dict:
    """The same dataset described six ways."""
    folders = {"train": "images/train", "val": "images/val"}
    return {
        "relative path, txt lists, names list": root / "config" / "data.yaml",
        "absolute path, folders, names dict": write_yaml(tmp_path / "a.yaml", {
            "path": str(root), **folders, "names": {0: "vehicle"}}),
        "no path (yaml beside the data)": write_yaml(root / "beside.yaml", {**folders, "names": ["vehicle"]}),
        "relative path from elsewhere": write_yaml(tmp_path / "deep" / "er" / "b.yaml", {
            "path": str(shutil.os.path.relpath(root, tmp_path / "deep" / "er")), **folders, "names": ["vehicle"]}),
        "list of folders": write_yaml(tmp_path / "c.yaml", {
            "path": str(root), "train": ["images/train"], "val": ["images/val"], "names": ["vehicle"]}),
        "nc only": write_yaml(tmp_path / "d.yaml", {"path": str(root), **folders, "nc": 1}),
    }


def test_every_layout_resolves_to_the_same_files(aerial, tmp_path):
    root = aerial.parent.parent
    expected_train = sorted((root / "images" / "train").glob("*.png"))
    hashes = {}
    for name, path in layouts(root, tmp_path).items():
        dataset = data.load(path)
        assert dataset.root == root.resolve(), name
        assert sorted(dataset.split("train")) == expected_train, name
        assert len(dataset.split("val")) == 3 and dataset.num_classes == 1, name
        hashes[name] = dataset.content_hash()
        # the resolved yaml Ultralytics' trainer reads names the same files
        resolved = data.load(dataset.resolved_yaml(tmp_path / "resolved" / f"{len(hashes)}.yaml"))
        assert resolved.images == dataset.images, name
    names_differ = {k for k in hashes if k == "nc only"}  # class_0 instead of vehicle
    assert len({h for k, h in hashes.items() if k not in names_differ}) == 1


def test_content_hash_follows_the_files_not_the_yaml(aerial, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(aerial.parent.parent, root)
    yaml_path = root / "config" / "data.yaml"
    before = data.load(yaml_path).content_hash()
    yaml_path.write_text(yaml_path.read_text() + "\n# a comment changes the yaml, not the data\n")
    assert data.load(yaml_path).content_hash() == before
    label = next((root / "labels" / "val").glob("*.txt"))
    label.write_text(label.read_text() + "0 0.5 0.5 0.1 0.1\n")
    assert data.load(yaml_path).content_hash() != before


@pytest.mark.parametrize("content, message", [
    ({"path": ".", "train": "images/train", "names": ["a"]}, "'val:' key missing"),
    ({"path": ".", "train": "images/train", "val": "nowhere", "names": ["a"]}, "images not found"),
    ({"path": ".", "train": "nowhere", "val": "images/val", "names": ["a"]}, "no train images found"),
    ({"path": ".", "train": "images/train", "val": "images/val"}, "either 'names' or 'nc'"),
    ({"path": ".", "train": "images/train", "val": "images/val", "names": ["a"], "nc": 2}, "must match"),
])
def test_bad_yamls_give_one_readable_line(aerial, content, message):
    root = aerial.parent.parent
    path = write_yaml(root / "bad.yaml", content)
    with pytest.raises(InputFileError) as error:
        data.load(path)
    text = str(error.value)
    assert message in text and "\n" not in text and text.isascii()


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(InputFileError, match="not found"):
        data.load(tmp_path / "nope.yaml")
    (tmp_path / "broken.yaml").write_text("path: [unclosed\n")
    with pytest.raises(InputFileError, match="not valid YAML"):
        data.load(tmp_path / "broken.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(InputFileError, match="not a dataset yaml"):
        data.load(tmp_path / "list.yaml")


def test_val_split_reads_non_square_images_and_segment_labels(aerial, tmp_path):
    items = val_split(aerial)
    assert {(item.path.suffix, item.classes.tolist() == [0] * len(item.classes)) for item in items} == {(".png", True)}
    from PIL import Image

    for item in items:  # boxes in each image's own pixels, not a square
        width, height = Image.open(item.path).size
        assert item.boxes[:, 2].max() <= width and item.boxes[:, 3].max() <= height
    assert any(Image.open(i.path).size[0] != Image.open(i.path).size[1] for i in items)
    # a segment polygon row counts as its bounding box, as in Ultralytics
    from compress.evaluate import _label_rows

    label = tmp_path / "seg.txt"
    label.write_text("0 0.1 0.2 0.5 0.2 0.5 0.6 0.1 0.6\n2 0.5 0.5 0.2 0.2\n")
    np.testing.assert_allclose(_label_rows(label), [[0, 0.3, 0.4, 0.4, 0.4], [2, 0.5, 0.5, 0.2, 0.2]])
    label.write_text("0 0.5 0.5\n")
    with pytest.raises(InputFileError, match="has 3 values"):
        _label_rows(label)


@pytest.mark.parametrize("count, largest, expected", [(64, 8, 8), (37, 8, 1), (36, 8, 6), (3, 8, 3), (1, 8, 1),
                                                      (16, 4, 4)])
def test_calibration_batches_are_equal(count, largest, expected):
    assert equal_batch_size(count, largest) == expected


def test_calibration_reader_on_a_ragged_count(aerial):
    images = data.load(aerial).split("train")  # 7 images: batches of 8 would leave one ragged batch
    reader = ImageCalibrationReader(images, (64, 64), batch=4)
    shapes = {batch.shape for batch in reader.batches}
    assert shapes == {(1, 3, 64, 64)} and len(reader.batches) == 7


def test_suggested_image_size_follows_the_images(aerial):
    dataset = data.load(aerial)
    assert data.suggest_imgsz(dataset, cap=640) == 416  # 400 px tiles -> next multiple of 32
    assert data.suggest_imgsz(dataset, cap=128) == 128
