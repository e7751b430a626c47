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
        # The release's inat2018_locations: one record per image (this fixture leaves the first one out).
        places = [
            {
                "id": img["id"],
                "lat": 37.0 + i,
                "lon": -122.0,
                "loc_uncert": 10,
                "date": f"2017-0{1 + i % 9}-02 1{i % 10}:00:00+00:00",
            }
            for i, img in enumerate(images[1:])
        ]
        (root / f"{split}2018_locations.json").write_text(json.dumps(places))
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
    args += [f"train_meta={tmp_path / 'inat' / 'train2018_locations.json'}"]
    args += [f"val_meta={tmp_path / 'inat' / 'val2018_locations.json'}"]
    assert main(args) == 0
    from safetensors import safe_open

    with safe_open(str(run / "model.safetensors"), "pt") as f:
        fields = json.loads(f.metadata()["classification_config"])
    assert fields["classes"] == [c["name"] for c in CATEGORIES] and fields["model_kwargs"]["meta_dim"] == 64
    capsys.readouterr()
    ckpt = str(run / "model.safetensors")
    evaluate = ["eval", "--checkpoint", ckpt, "--val-data", str(val), "--device", "cpu", "--json"]
    assert main([*evaluate, "--val-meta", str(tmp_path / "inat" / "val2018_locations.json")]) == 0
    with_meta = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert with_meta["samples"] == 12 and 0.0 <= with_meta["top1"] <= 100.0
    assert main(evaluate) == 0  # no locations: the meta branches see zeros, a different loss
    without = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert without["samples"] == 12 and without["loss"] != with_meta["loss"]


def test_inat_meta_inputs_are_metaformer_encoding():
    """Date -> sin / cos of month / 12 and hour / 24; place -> unit vector; worked by hand."""
    from internimage.data import inaturalist_meta

    assert inaturalist_meta("2017-03-02 12:13:14+00:00", 0.0, 90.0) == pytest.approx([1, 0, 0, -1, 0, 1, 0], abs=1e-12)
    assert inaturalist_meta("2017-06-30", 90.0, 0.0) == pytest.approx([0, -1, 0, 0, 0, 0, 1], abs=1e-12)
    assert inaturalist_meta(None, None, None) == [0.0] * 7 and inaturalist_meta("n/a", 0, 0) == [0.0] * 7


def test_inat_meta_branches_add_their_logits_as_the_original():
    """``intern_image_meta_former.forward``: image logits + meta_head(meta_norm([mlp1(date), mlp2(place)])), each mlp
    Linear -> ReLU -> LayerNorm -> MetaEncoder (x + LN(ReLU(w2 LN(ReLU(w1 x)))))."""
    import torch
    import torch.nn.functional as F

    from internimage.models import create_model

    torch.manual_seed(0)
    model = create_model("internimage_test_32", num_classes=5, meta_dim=8).eval()
    x, meta = torch.randn(2, 3, 32, 32), torch.randn(2, 7)
    sd = model.state_dict()

    def branch(name, v):
        y = F.layer_norm(F.relu(F.linear(v, sd[f"{name}.0.weight"], sd[f"{name}.0.bias"])), (8,),
                         sd[f"{name}.2.weight"], sd[f"{name}.2.bias"])  # fmt: skip
        z = F.layer_norm(F.relu(F.linear(y, sd[f"{name}.3.w1.weight"], sd[f"{name}.3.w1.bias"])), (8,),
                         sd[f"{name}.3.norm_fn1.weight"], sd[f"{name}.3.norm_fn1.bias"])  # fmt: skip
        z = F.layer_norm(F.relu(F.linear(z, sd[f"{name}.3.w2.weight"], sd[f"{name}.3.w2.bias"])), (8,),
                         sd[f"{name}.3.norm_fn2.weight"], sd[f"{name}.3.norm_fn2.bias"])  # fmt: skip
        return y + z

    with torch.no_grad():
        joint = torch.cat([branch("meta_head_1", meta[:, :4]), branch("meta_head_2", meta[:, 4:])], -1)
        joint = F.layer_norm(joint, (16,), sd["meta_norm.weight"], sd["meta_norm.bias"], eps=1e-6)
        want = model.forward_head(model.forward_features(x)) + F.linear(
            joint, sd["meta_head.weight"], sd["meta_head.bias"]
        )
        assert torch.allclose(model(x, meta), want, atol=1e-6)
    with pytest.raises(ValueError, match=r"meta must be \(N, 7\)"):
        model(x, meta[:, :6])


def test_inat_preset_official_layout_loads_strictly():
    """The H image model's layout plus the meta branches of ``intern_image_meta_former`` (meta_dim 64, 8142 classes),
    names and shapes written from the original module definitions (the image part: ``tests/test_models.py``'s
    key -> shape table of the original ``intern_image.py`` with the iNat18 config's H settings)."""
    import torch

    from internimage.classification import ClassificationConfig
    from internimage.models import create_model
    from test_models import ORIGINAL_CONFIGS, original_state_dict_shapes

    cfg = ClassificationConfig.from_preset("internimage_h_22ktoinat18_384")
    model = create_model(cfg.model, num_classes=cfg.num_classes, device="meta", **cfg.model_kwargs)
    official = original_state_dict_shapes(ORIGINAL_CONFIGS["h"], 8142)
    for i, inputs in ((1, 4), (2, 3)):
        official |= {f"meta_head_{i}.0.weight": (64, inputs), f"meta_head_{i}.0.bias": (64,)}
        official |= {f"meta_head_{i}.2.weight": (64,), f"meta_head_{i}.2.bias": (64,)}
        for lin in ("w1", "w2"):
            official |= {f"meta_head_{i}.3.{lin}.weight": (64, 64), f"meta_head_{i}.3.{lin}.bias": (64,)}
        for norm in ("norm_fn1", "norm_fn2"):
            official |= {f"meta_head_{i}.3.{norm}.weight": (64,), f"meta_head_{i}.3.{norm}.bias": (64,)}
    official |= {"meta_norm.weight": (128,), "meta_norm.bias": (128,)}
    official |= {"meta_head.weight": (8142, 128), "meta_head.bias": (8142,)}
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == official
    state = {k: torch.empty(v, device="meta") for k, v in official.items()}
    model.load_state_dict(state, strict=True, assign=True)
    extra = sum(torch.Size(v).numel() for k, v in official.items() if k.startswith("meta"))
    # Per branch: input Linear, LayerNorm, MetaEncoder (2 Linear 64x64 + 2 LayerNorm); then meta_norm and meta_head.
    assert extra == (64 * 4 + 64) + (64 * 3 + 64) + 2 * (128 + 2 * (64 * 64 + 64) + 2 * 128) + 256 + 8142 * 129
