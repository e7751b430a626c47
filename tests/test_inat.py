"""iNaturalist 2018 (``train2018.json`` / ``val2018.json``) and the ``internimage_h_22ktoinat18_384`` preset.

The fixture is written in the release's format: COCO-style ``images`` / ``annotations`` / ``categories`` tables with
``file_name`` paths ``train_val2018/<kingdom>/<category id>/<hash>.jpg`` relative to the dataset root.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from internimage.data import INaturalistDataset, build_image_dataset

# Category ids and names as in the 2018 release (ids 0..8141; these three are real entries of categories.json).
CATEGORIES = [
    {"id": 0, "name": "Tricholoma flavovirens", "supercategory": "Fungi", "kingdom": "Fungi"},
    {"id": 1, "name": "Amanita muscaria", "supercategory": "Fungi", "kingdom": "Fungi"},
    {"id": 2, "name": "Quercus agrifolia", "supercategory": "Plantae", "kingdom": "Plantae"},
]


def write_inat(root: Path, per_class: int = 4, seed: int = 0) -> tuple[Path, Path]:
    """``train2018.json`` and ``val2018.json`` under ``root``; the class of an image is its dominant colour."""
    rng = np.random.default_rng(seed)
    out = []
    for split, offset in (("train", 0), ("val", 1000)):
        images, annotations = [], []
        for cat in CATEGORIES:
            for i in range(per_class):
                img_id = offset + cat["id"] * 100 + i
                digest = hashlib.md5(f"{split}{img_id}".encode()).hexdigest()
                name = f"train_val2018/{cat['supercategory']}/{cat['id']}/{digest}.jpg"
                pixels = rng.integers(0, 60, (20, 24, 3), dtype=np.uint8)
                pixels[..., cat["id"]] += 150
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(root / name, quality=95)
                images.append({"id": img_id, "file_name": name, "width": 24, "height": 20, "license": 0})
                annotations.append({"id": img_id, "image_id": img_id, "category_id": cat["id"]})
        table = {"info": {"year": 2018}, "images": images, "annotations": annotations, "categories": CATEGORIES}
        path = root / f"{split}2018.json"
        path.write_text(json.dumps(table))
        out.append(path)
    return out[0], out[1]


def test_inat_reader_labels_by_category_id_and_resolves_paths(tmp_path):
    train, _ = write_inat(tmp_path, per_class=2)
    ds = build_image_dataset(train)
    assert isinstance(ds, INaturalistDataset) and len(ds) == 6
    assert ds.classes == ["Tricholoma flavovirens", "Amanita muscaria", "Quercus agrifolia"]
    path, label = ds.samples[4]
    assert label == 2 and path.startswith(str(tmp_path / "train_val2018" / "Plantae" / "2"))
    img, label = ds[4]
    assert img.size == (24, 20) and label == 2
    # Relabelled to a model's class order by name (evaluation of a checkpoint that stores its classes).
    order = ["Quercus agrifolia", "Tricholoma flavovirens", "Amanita muscaria"]
    assert [lab for _, lab in INaturalistDataset(train, classes=order).samples][::2] == [1, 2, 0]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.pop("categories"), "no categories table"),
        (lambda t: t["annotations"][0].update(category_id=9999), "category_id 9999"),
        (lambda t: t["annotations"].pop(0), "has no annotation"),
    ],
)
def test_inat_bad_json_is_one_clear_error(tmp_path, edit, message):
    train, _ = write_inat(tmp_path, per_class=1)
    table = json.loads(train.read_text())
    edit(table)
    train.write_text(json.dumps(table))
    with pytest.raises(ValueError, match=message) as err:
        INaturalistDataset(train)
    assert str(train) in str(err.value)


def test_inat_preset_and_cli_train_then_eval(tmp_path, capsys):
    from internimage.classification import ClassificationConfig
    from internimage.cli import main

    cfg = ClassificationConfig.from_preset("internimage_h_22ktoinat18_384")
    assert (cfg.num_classes, cfg.img_size, cfg.epochs, cfg.label_smoothing) == (8142, 384, 100, 0.3)
    train, val = write_inat(tmp_path / "inat")
    run = tmp_path / "run"
    args = ["train", "--preset", "internimage_h_22ktoinat18_384", "--train-data", str(train), "--val-data", str(val)]
    args += ["--output", str(run), "--device", "cpu", "--set", "model=internimage_test_32", "num_classes=0"]
    args += ["img_size=32", "epochs=1", "batch_size=4", "workers=0", "log_every=1"]
    assert main(args) == 0
    from safetensors import safe_open

    with safe_open(str(run / "model.safetensors"), "pt") as f:
        fields = json.loads(f.metadata()["classification_config"])
    assert fields["classes"] == [c["name"] for c in CATEGORIES]
    capsys.readouterr()
    ckpt = str(run / "model.safetensors")
    assert main(["eval", "--checkpoint", ckpt, "--val-data", str(val), "--device", "cpu", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["samples"] == 12 and 0.0 <= metrics["top1"] <= 100.0
