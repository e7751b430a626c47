"""Data: image folders / file lists that skip unreadable images, Fashion-MNIST IDX reading and lookup."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_folder, write_idx
from internimage.data import (
    FileListDataset,
    ImageFolderDataset,
    SkipCollate,
    build_eval_transform,
    build_image_dataset,
    find_fashion_mnist,
    load_fashion_mnist,
)
from internimage.data import fashion_mnist as fm


def test_image_folder_skips_corrupt_images(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", corrupt=2)
    ds = ImageFolderDataset(root, build_eval_transform(16, mean=(0.5,) * 3, std=(0.5,) * 3))
    assert ds.classes == ["class0", "class1", "class2"]
    assert len(ds) == 3 * 4 + 2 + 1
    items = [ds[i] for i in range(len(ds))]
    assert sum(item is None for item in items) == 3
    batch = SkipCollate()(items)
    assert batch["num_skipped"] == 3
    assert batch["image"].shape == (12, 3, 16, 16) and batch["target"].tolist().count(0) == 4
    empty = SkipCollate()([None, None])
    assert empty["num_skipped"] == 2 and empty["image"].numel() == 0


def test_file_list_dataset_and_errors(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", corrupt=0)
    lines = ["# comment", "class0/0.png 0", "class2/1.png 2", "", "class1/missing.png 1"]
    (tmp_path / "train.txt").write_text("\n".join(lines))
    ds = FileListDataset(tmp_path / "train.txt", root=root, mode="L")
    assert len(ds) == 3 and ds.classes == ["0", "1", "2"]
    img, label = ds[1]
    assert label == 2 and img.mode == "L"
    assert ds[2] is None  # missing file: skipped, not fatal
    (tmp_path / "bad.txt").write_text("class0/0.png zero\n")
    with pytest.raises(ValueError, match="bad.txt:1: expected 'path label'"):
        FileListDataset(tmp_path / "bad.txt")
    with pytest.raises(FileNotFoundError, match="dataset not found"):
        build_image_dataset(tmp_path / "nope")
    (tmp_path / "flat").mkdir()
    with pytest.raises(ValueError, match="no class sub-folders"):
        ImageFolderDataset(tmp_path / "flat")


def test_fashion_mnist_reader_and_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (7, 28, 28)), rng.integers(0, 10, (7,))
    for img_name, lbl_name in fm._FILES.values():
        write_idx(tmp_path / f"{img_name}.gz", images)
        write_idx(tmp_path / f"{lbl_name}.gz", labels)
    assert find_fashion_mnist(tmp_path, download=False) == tmp_path
    x, y = load_fashion_mnist(tmp_path, "test")
    assert (
        x.dtype == torch.uint8 and x.shape == (7, 28, 28) and torch.equal(x, torch.from_numpy(images.astype(np.uint8)))
    )
    assert y.tolist() == labels.tolist()
    # Truncated payload: a clear error, not a reshape traceback.
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels[:5])
    with pytest.raises(ValueError, match="images but 5 labels"):
        load_fashion_mnist(tmp_path, "test")
    # Nothing anywhere and no download: one line telling how to install it.
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "none")
    monkeypatch.setattr(fm, "CACHE_DIR", tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        find_fashion_mnist(tmp_path / "empty", download=False)


@pytest.mark.parametrize("pil_mode, suffix", [("I;16", ".png"), ("I", ".tif")])
def test_16_bit_images_are_scaled_to_8_bits_not_clipped(tmp_path: Path, pil_mode: str, suffix: str) -> None:
    # A ramp over the whole 16-bit range: 257 * k is exactly k in 8 bits. PIL's own convert() clips every value
    # above 255 to white (issue #14: 99.6% of the pixels of a 16-bit PNG came out at 255).
    k = np.arange(256, dtype=np.int64).reshape(16, 16)
    pixels = (k * 257).astype(np.uint16 if pil_mode == "I;16" else np.int32)
    (tmp_path / "data" / "a").mkdir(parents=True)
    path = tmp_path / "data" / "a" / f"ramp{suffix}"
    Image.fromarray(pixels).save(path)
    with Image.open(path) as reopened:
        assert reopened.mode == pil_mode  # the file really is a 16-bit (or 32-bit int) image
    rgb, _ = ImageFolderDataset(tmp_path / "data")[0]
    assert rgb.mode == "RGB"
    assert np.array_equal(np.asarray(rgb), np.repeat(k[..., None], 3, axis=2).astype(np.uint8))
    gray, _ = ImageFolderDataset(tmp_path / "data", mode="L")[0]
    assert np.array_equal(np.asarray(gray), k.astype(np.uint8))
    # The segmentation and COCO readers decode images the same way.
    from internimage.segmentation.data import _read_image

    assert torch.equal(_read_image(path)[0], torch.from_numpy(k.astype(np.uint8)))


def test_dataset_problems_are_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_folder(tmp_path / "data", classes=2, per_class=2, corrupt=0)
    (root / "class_empty").mkdir()
    with caplog.at_level(logging.WARNING, logger="internimage.data.datasets"):
        ds = ImageFolderDataset(root)
    assert ds.classes == ["class0", "class1", "class_empty"]
    assert "class folder(s) without images: class_empty" in caplog.text
    caplog.clear()
    make_folder(tmp_path / "one", classes=1, per_class=2, corrupt=0)
    with caplog.at_level(logging.WARNING, logger="internimage.data.datasets"):
        ImageFolderDataset(tmp_path / "one")
    assert "single class folder ('class0')" in caplog.text
    # One stray label must not silently make an 8-class head out of a 2-class list.
    (tmp_path / "train.txt").write_text("class0/0.png 0\nclass1/0.png 1\nclass1/1.png 7\n")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="internimage.data.datasets"):
        ds = FileListDataset(tmp_path / "train.txt", root=root)
    assert len(ds.classes) == 8
    assert "labels 2, 3, 4, 5, 6 never occur; the largest label 7 (line 3) makes 8 classes" in caplog.text
    with pytest.raises(ValueError, match=r"train.txt:3: label 7 is out of range \(labels must be \[0, 2\)\)"):
        FileListDataset(tmp_path / "train.txt", root=root, classes=["cat", "dog"])
    (tmp_path / "neg.txt").write_text("class0/0.png -1\n")
    with pytest.raises(ValueError, match="neg.txt:1: label -1 is out of range"):
        FileListDataset(tmp_path / "neg.txt", root=root)
