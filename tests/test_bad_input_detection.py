"""Bad detection input through the CLI (issue #14, detection part): a clear one-line error, or the right answer.

Silent failures first (class order of the checkpoint, duplicate ids, degenerate polygons, predict drawing over
its inputs), then unclear errors: each case checks the exit code, exactly one ``internimage <cmd>: error:`` line
naming the file or record, no traceback and no output left behind. A tiny Mask R-CNN trained for a few steps
(module fixture) has a box mAP clearly above 0, so a wrong class mapping shows in its metrics.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("faster_coco_eval")

from conftest import cli_fails  # noqa: E402
from internimage.cli import main  # noqa: E402
from internimage.detection import (  # noqa: E402
    META_KEY,
    DetectionConfig,
    DetectionTask,
    build_dataset,
    build_detector_from_config,
)
from internimage.detection.data import CocoDetection, Compose, Resize, collate_detection  # noqa: E402
from internimage.models.checkpoint import save_state_dict  # noqa: E402
from test_detection import MASK_RCNN, make_coco  # noqa: E402

KWARGS = {k: v for k, v in MASK_RCNN.items() if k != "backbone_overrides"}
CLASSES = ["box", "disc"]  # make_coco's categories 3 and 6


def _config(**fields: Any) -> DetectionConfig:
    base = dict(model="internimage_test_32", num_classes=2, img_scale=(64, 48), model_kwargs=KWARGS, workers=0)
    return DetectionConfig(**{**base, **fields})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one thread is faster, and much faster on a busy machine (7x measured on 2 shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """4 synthetic COCO images, their annotations and an untrained checkpoint of classes box, disc."""
    root = tmp_path_factory.mktemp("bad_det")
    ann, images = make_coco(root, 4)
    torch.manual_seed(0)
    ck = _save(build_detector_from_config(_config(classes=CLASSES), load_pretrained=False), root / "det.safetensors")
    return {"root": root, "ann": ann, "images": images, "coco": json.loads(ann.read_text()), "ck": ck}


@pytest.fixture(scope="module")
def trained(data: dict[str, Any]) -> str:
    """The checkpoint after 16 steps on the 4 images: box mAP clearly above 0, so a wrong class mapping shows."""
    torch.manual_seed(0)
    model = build_detector_from_config(_config(classes=CLASSES), load_pretrained=False)
    ds = CocoDetection(data["ann"], data["images"], Compose([Resize([(64, 48)])]), train=True)
    batch = collate_detection([ds[i] for i in range(len(ds))])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    for _ in range(16):
        loss = sum(model(batch["images"], batch["targets"]).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return _save(model, data["root"] / "trained.safetensors")


def _save(model: torch.nn.Module, path: Path) -> str:
    meta = {"task": "detection", META_KEY: json.dumps(_config(classes=CLASSES).model_fields())}
    return str(save_state_dict(model.state_dict(), path, meta))


def _variant(data: dict[str, Any], name: str, edit: Callable[[dict[str, Any]], Any]) -> str:
    """Write ``<name>.json``: the fixture's annotations changed by ``edit`` (in place); returns its name."""
    coco = copy.deepcopy(data["coco"])
    edit(coco)
    (data["root"] / f"{name}.json").write_text(json.dumps(coco))
    return f"{name}.json"


def _eval_argv(data: dict[str, Any], ann_name: str, *extra: str, ck: str = "") -> list[str]:
    ck, root = ck or data["ck"], str(data["root"])
    return ["eval", "--task", "detection", "--checkpoint", ck, "--data-root", root, "--device", "cpu", *extra,
            "--set", f"val_ann={ann_name}", "val_images=images"]  # fmt: skip


def _swap_ids(coco: dict[str, Any]) -> None:
    """The same objects and names, with the ids of box (3) and disc (6) exchanged."""
    swap = {3: 6, 6: 3}
    for cat in coco["categories"]:
        cat["id"] = swap[cat["id"]]
    for ann in coco["annotations"]:
        ann["category_id"] = swap[ann["category_id"]]


def _eval_metrics(capsys: pytest.CaptureFixture[str], argv: list[str], out: Path) -> dict[str, float]:
    assert main([*argv, "--output", str(out)]) == 0
    capsys.readouterr()
    return json.loads((out / "det_metrics.json").read_text())


# ----------------------------------------------------------------------------------------------- silent failures
def test_eval_matches_categories_to_the_checkpoint_classes_by_name(data, trained, capsys, tmp_path):
    # Swapped category ids used to score the checkpoint's "box" predictions as discs (mAP 0.385 -> 0.038).
    swapped = _variant(data, "swapped", _swap_ids)
    plain = _eval_metrics(capsys, _eval_argv(data, "ann.json", ck=trained), tmp_path / "a")
    crossed = _eval_metrics(capsys, _eval_argv(data, swapped, ck=trained), tmp_path / "b")
    assert plain["bbox_mAP"] > 0.05, plain
    for key, value in plain.items():
        assert crossed[key] == pytest.approx(value, abs=1e-9), key
    # Names the checkpoint does not know: one line naming them, nothing written.
    renamed = _variant(data, "renamed", lambda c: c["categories"][1].update(name="ball"))
    argv = _eval_argv(data, renamed, "--output", str(tmp_path / "c"))
    cli_fails(capsys, argv, "renamed.json", "ball are not classes of the model", "disc have no category")
    assert not (tmp_path / "c").exists()


def test_labels_follow_the_configured_class_order(data):
    swapped = data["root"] / _variant(data, "swapped_ds", _swap_ids)
    by_id = CocoDetection(data["ann"], data["images"])  # no names (official weights): sorted ids
    by_name = CocoDetection(swapped, data["images"], classes=CLASSES)
    assert by_id.cat_ids == [3, 6] and by_name.cat_ids == [6, 3] and by_name.class_names == CLASSES
    for i in range(len(by_id)):
        assert torch.equal(by_id.load_target(i)["labels"], by_name.load_target(i)["labels"])
    # Training with names in another order than the ids: labels (and so predictions.json names) follow the names.
    cfg = _config(data_root=str(data["root"]), train_ann="ann.json", train_images="images", classes=["disc", "box"])
    reordered = build_dataset(cfg, train=True)
    assert reordered.cat_ids == [6, 3] and reordered.class_names == ["disc", "box"]
    # A run without names takes the train file's; a val file numbering them differently is matched by them.
    cfg = _config(data_root=str(data["root"]), train_ann="ann.json", train_images="images", val_ann=swapped.name)
    cfg.val_images = "images"
    train, val = DetectionTask(cfg).build_datasets(None)
    assert cfg.classes == CLASSES and train.cat_ids == [3, 6] and val.cat_ids == [6, 3]


def test_duplicate_ids_are_refused(data, capsys, tmp_path):
    # All annotation ids 1: COCO's index kept one annotation (mAP 0.385 -> 0.024).
    same_ann = _variant(data, "same_ann", lambda c: [a.update(id=1) for a in c["annotations"]])
    argv = _eval_argv(data, same_ann, "--output", str(tmp_path / "ev"))
    cli_fails(capsys, argv, "same_ann.json", "annotation ids must be unique", "annotation id 1")
    # Two images sharing an id received each other's boxes in training.
    same_image = _variant(data, "same_image", lambda c: c["images"][1].update(id=1))
    argv = _eval_argv(data, same_image, "--output", str(tmp_path / "ev"))
    cli_fails(capsys, argv, "same_image.json", "image ids must be unique", "image id 1 (2 times)", "000.png, 001.png")
    assert not (tmp_path / "ev").exists()


def test_degenerate_polygons_are_dropped_with_one_warning(data, caplog):
    tri = [40, 40, 50, 40, 50, 50]

    def edit(coco: dict[str, Any]) -> None:
        anns = [a for a in coco["annotations"] if a["image_id"] == 1]
        anns[0]["segmentation"] = [[10, 10, 20, 20], tri]  # 2 points first: was read as boxes
        if len(anns) > 1:
            anns[1]["segmentation"] = [[10, 10], [5, 5, 30, 5, 30, 30, 7], anns[1]["segmentation"][0]]

    path = data["root"] / _variant(data, "polygons", edit)
    with caplog.at_level(logging.WARNING, logger="internimage"):
        ds = CocoDetection(path, data["images"])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    n = 1 + 2 * (sum(a["image_id"] == 1 for a in data["coco"]["annotations"]) > 1)
    assert len(warnings) == 1 and f"dropped {n} polygon(s)" in warnings[0], warnings
    plain = CocoDetection(data["ann"], data["images"]).load_target(0)["masks"]
    masks = ds.load_target(0)["masks"]
    from faster_coco_eval.core import mask as mask_api

    want = mask_api.decode(mask_api.merge(mask_api.frPyObjects([tri], 96, 128)))
    assert np.array_equal(masks[0].numpy(), want)  # the triangle alone, not two boxes
    assert torch.equal(masks[1:], plain[1:])  # the other objects keep their own polygon


def test_predict_never_draws_over_its_inputs(data, capsys, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("000.png", "001.png"):
        (folder / name).write_bytes((data["images"] / name).read_bytes())
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    base = ["predict", "--task", "detection", "--checkpoint", data["ck"], "--device", "cpu"]
    cli_fails(capsys, [*base, str(folder), "--output", str(folder)], "is one of the inputs")
    cli_fails(capsys, [*base, str(folder), "--output", str(folder), "--overwrite"], "is one of the inputs")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    # An existing output only with --overwrite; labels are the checkpoint's names.
    out = tmp_path / "out"
    assert main([*base, str(folder / "000.png"), "--output", str(out), "--score-thresh", "0"]) == 0
    records = json.loads((out / "predictions.json").read_text())
    assert records[0]["detections"] and {d["label"] for d in records[0]["detections"]} <= set(CLASSES)
    cli_fails(capsys, [*base, str(folder / "000.png"), "--output", str(out)], "already exists", "--overwrite")
    assert main([*base, str(folder / "000.png"), "--output", str(out), "--overwrite"]) == 0
    # eval's det_metrics.json too.
    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / "det_metrics.json").write_text("{}")
    cli_fails(capsys, _eval_argv(data, "ann.json", "--output", str(tmp_path / "ev")), "det_metrics.json already")
    assert (tmp_path / "ev" / "det_metrics.json").read_text() == "{}"


def test_predict_skips_unreadable_images(data, capsys, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "good.png").write_bytes((data["images"] / "000.png").read_bytes())
    whole = (data["images"] / "001.png").read_bytes()
    (folder / "truncated.png").write_bytes(whole[: len(whole) // 2])
    base = ["predict", "--task", "detection", "--checkpoint", data["ck"], "--device", "cpu"]
    assert main([*base, str(folder), "--output", str(tmp_path / "out")]) == 0
    assert "1 unreadable image(s) skipped" in capsys.readouterr().out
    assert [r["image"] for r in json.loads((tmp_path / "out" / "predictions.json").read_text())] == [
        str(folder / "good.png")
    ]
    (folder / "good.png").unlink()
    cli_fails(capsys, [*base, str(folder), "--output", str(tmp_path / "none")], "none of the 1 images could be read")
    assert not (tmp_path / "none").exists()


# ----------------------------------------------------------------------------------------------- unclear errors
def _del(key: str, where: str = "annotations") -> Callable[[dict[str, Any]], None]:
    return lambda coco: coco[where][0].pop(key)


def _set(key: str, value: Any, where: str = "annotations") -> Callable[[dict[str, Any]], None]:
    return lambda coco: coco[where][0].update({key: value})


ANNOTATION_CASES = [
    ("no_size", _del("height", "images"), ["image 1 (000.png)", "'height' must be a positive integer, missing"]),
    ("no_bbox", _del("bbox"), ["annotation 1 has no 'bbox'"]),
    ("str_bbox", _set("bbox", ["1", "2", "3", "4"]), ["annotation 1: bbox must be 4 numbers", '["1", "2"']),
    ("short_bbox", _set("bbox", [1, 2, 3]), ["annotation 1: bbox must be 4 numbers", "[1, 2, 3]"]),
    ("neg_bbox", _set("bbox", [10, 10, -5, 8]), ["annotation 1: bbox [10, 10, -5, 8] has a negative width"]),
    ("no_image", _set("image_id", 42), ["annotation 1: image_id 42 is not an image"]),
    ("flat_polygon", _set("segmentation", [1, 2, 3, 4, 5, 6]), ["annotation 1: segmentation must be a list"]),
]


@pytest.mark.parametrize("name, edit, needles", ANNOTATION_CASES, ids=[c[0] for c in ANNOTATION_CASES])
def test_bad_annotation_records_are_named(data, capsys, tmp_path, name, edit, needles):
    argv = _eval_argv(data, _variant(data, name, edit), "--output", str(tmp_path / "ev"))
    cli_fails(capsys, argv, f"{name}.json", *needles)
    assert not (tmp_path / "ev").exists()


def test_unknown_category_is_refused_before_training(data, capsys, tmp_path):
    # Was "KeyError: 99" from a loader during training.
    name = _variant(data, "cat99", _set("category_id", 99))
    out = tmp_path / "run"
    argv = ["train", "--task", "detection", "--data-root", str(data["root"]), "--model", "internimage_test_32",
            "--num-classes", "2", "--device", "cpu", "--output", str(out), "--set", f"train_ann={name}",
            "train_images=images", "val_ann=", "workers=0", f"model_kwargs={json.dumps(KWARGS)}"]  # fmt: skip
    cli_fails(capsys, argv, "cat99.json", "annotation 1: category_id 99 is not in 'categories' (ids 3, 6)")
    assert not out.exists() or not list(out.iterdir())


def test_unreadable_annotation_and_image_files_are_named(data, capsys, tmp_path):
    (data["root"] / "broken.json").write_text('{"images": [],\n "annotations": [,]}')
    cli_fails(capsys, _eval_argv(data, "broken.json"), "broken.json is not valid JSON (line 2, column")
    # A missing image file: was a loader-worker traceback naming no file.
    missing = _variant(data, "missing", lambda c: c["images"][2].update(file_name="gone.png"))
    cli_fails(capsys, _eval_argv(data, missing), "image file not found", "gone.png", "image id 3 of", "missing.json")
    # An image file that cannot be decoded: named, through the loader workers.
    images = tmp_path / "images"
    images.mkdir()
    for p in data["images"].iterdir():
        (images / p.name).write_bytes(p.read_bytes()[:100] if p.name == "001.png" else p.read_bytes())
    argv = [*_eval_argv(data, "ann.json", "--output", str(tmp_path / "ev")), f"val_images={images}"]
    cli_fails(capsys, argv, "cannot read image", "001.png", "image id 2")
    assert not (tmp_path / "ev").exists()


def test_config_values_are_checked_when_the_config_is_built(data, capsys):
    cfg = ["train", "--task", "detection", "--print-config", "--set"]
    cli_fails(capsys, [*cfg, "scale_factor=0"], "scale_factor must be > 0, got 0")
    cli_fails(capsys, [*cfg, "scale_factor=-0.5"], "scale_factor must be > 0, got -0.5")
    cli_fails(capsys, [*cfg, "img_scale=[0,48]"], "img_scale must be two positive integers (long, short), got [0, 48]")
    cli_fails(capsys, [*cfg, "score_thresh=1.5"], "score_thresh must be in [0, 1], got 1.5")
    cli_fails(capsys, [*cfg, "classes=[a,a]", "num_classes=2"], "classes must be unique names")
    cli_fails(capsys, [*_eval_argv(data, "ann.json"), "score_thresh=-0.1"], "score_thresh must be in [0, 1], got -0.1")
    image = str(data["images"] / "000.png")
    predict = ["predict", "--task", "detection", "--checkpoint", data["ck"], image, "--output", "unused"]
    cli_fails(capsys, [*predict, "--score-thresh", "2"], "score_thresh must be in [0, 1], got 2.0")
    cli_fails(capsys, [*predict, "--set", "img_scale=[64,0]"], "img_scale must be two positive integers")
    assert not Path("unused").exists()
