"""Bad input to ``internimage train|eval|predict --task segmentation``: one clear line and exit 1, or the right answer.

The silent failures of the issue are regression cases here: predict writing over an input, eval reading the
dataset's labels in the checkpoint's class order, an empty ``test_ratios`` scoring without a forward pass, label 0
thrown away by ``reduce_zero_label``. The unclear errors (bad label maps, missing annotations, bad config values)
must give one ``internimage <cmd>: error:`` line naming the file and the problem, and leave no output behind.

One checkpoint serves every case: a tiny UperNet fitted for a few steps on coloured rectangles (class = colour),
so its mIoU is clearly above chance and a wrong class order shows in the score.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import cli_fails
from internimage.cli import main
from internimage.models.checkpoint import save_state_dict
from internimage.segmentation import SegmentationConfig, SegmentationTask, build_dataset, build_segmentor
from internimage.segmentation.data import SegTestTransform
from test_segmentation import synthetic_scene

NAMES = ["red", "green", "blue", "yellow"]
SIZE = 32


def scenes(n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The same ``n`` scenes (image, class ids) on every call: the checkpoint is fitted to the evaluated images."""
    rng = np.random.default_rng(1)
    return [synthetic_scene(rng, SIZE) for _ in range(n)]


def _fit_checkpoint(path: Path) -> None:
    """A tiny UperNet whose classifier is fitted to the colours, saved as ``SegmentationTask.export_metadata`` does.

    A linear probe: the random network's features of three scenes are computed once, and only the final 1x1
    classifier is fitted to them (a logistic regression), seconds instead of minutes of backward passes.
    """
    cfg = SegmentationConfig(
        model="internimage_test_32",
        num_classes=len(NAMES),
        classes=NAMES,
        decode_channels=16,
        aux_channels=8,
        img_scale=(64, SIZE),
        crop_size=(SIZE, SIZE),
        test_crop=(SIZE, SIZE),
        test_stride=(16, 16),
    )
    torch.manual_seed(0)
    model = build_segmentor(cfg, load_pretrained=False).eval()
    data = scenes(3)
    x = torch.stack([SegTestTransform()(torch.from_numpy(i).permute(2, 0, 1), None)[0] for i, _ in data])
    y = torch.stack([torch.from_numpy(lab).long() for _, lab in data]).flatten()
    classifier = model.decode_head.conv_seg
    feats: list[torch.Tensor] = []
    hook = classifier.register_forward_hook(lambda _m, inputs, _out: feats.append(inputs[0]))
    with torch.no_grad():
        model(x)
    hook.remove()
    # 1x1 conv and bilinear upsampling commute, so fitting on upsampled features fits the full-size logits.
    f = torch.nn.functional.interpolate(feats[0], size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    f = f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])
    linear = torch.nn.Linear(f.shape[1], len(NAMES))
    opt = torch.optim.Adam(linear.parameters(), lr=0.05)
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(linear(f), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        classifier.weight.copy_(linear.weight[:, :, None, None])
        classifier.bias.copy_(linear.bias)
    save_state_dict(model.state_dict(), path, SegmentationTask(cfg).export_metadata())


def write_split(
    root: Path,
    split: str = "validation",
    n: int = 3,
    order: list[str] | None = None,
    zero_is_class: bool = False,
    label_mode: str = "L",
    label_size: int = SIZE,
    stray_value: int | None = None,
) -> Path:
    """An ADE20K-style split of ``n`` scenes whose ``classes.txt`` lists ``order`` (labels follow it).

    Args:
        root: Dataset root.
        split: Split folder.
        n: Images.
        order: Class names in label-id order (any permutation of ``NAMES``; labels are renumbered to match).
        zero_is_class: Store class ids as they are (0 = a real class) instead of ADE's id + 1 with 0 = unlabelled.
        label_mode: PIL mode of the label maps (``L``, or a wrong ``RGB`` / ``LA``).
        label_size: Side of the label maps (a wrong one: not ``SIZE``).
        stray_value: A stored value written into a corner of every label map.
    """
    order = order or NAMES
    renumber = np.array([order.index(name) for name in NAMES], dtype=np.uint8)
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
    for i, (img, label) in enumerate(scenes(n)):
        stored = renumber[label] if zero_is_class else renumber[label] + 1
        if not zero_is_class:
            stored[:2] = 0
        if stray_value is not None:
            stored[-3:, -3:] = stray_value
        lab = Image.fromarray(stored).convert(label_mode).resize((label_size, label_size), Image.NEAREST)
        Image.fromarray(img).save(root / "images" / split / f"img_{i:03d}.png")
        lab.save(root / "annotations" / split / f"img_{i:03d}.png")
    (root / "classes.txt").write_text("\n".join(order) + "\n")
    return root


@pytest.fixture(scope="module")
def seg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkpoint, an ADE20K-style split of the scenes it was fitted to, and its eval in ``base/``."""
    root = tmp_path_factory.mktemp("bad_seg")
    _fit_checkpoint(root / "model.safetensors")
    write_split(root / "data")
    assert main(_eval(root, root / "data", "--output", str(root / "base"))) == 0
    return root


def _base(seg: Path) -> dict:
    return json.loads((seg / "base" / "seg_metrics.json").read_text())


def _eval(seg: Path, data: Path | str, *extra: str) -> list[str]:
    ck = str(seg / "model.safetensors")
    return ["eval", "--task", "segmentation", "--checkpoint", ck, "--data-root", str(data), "--device", "cpu", *extra]


def _train(data: Path, out: Path, workers: int) -> list[str]:
    """A one-step run; with ``workers`` > 0 errors of the data travel through worker processes."""
    args = ["train", "--task", "segmentation", "--data-root", str(data), "--num-classes", "4", "--output", str(out)]
    args += ["--iters", "1", "--batch-size", "2", "--device", "cpu", "--set", "model=internimage_test_32"]
    args += ["decode_channels=16", "aux_channels=8", "crop_size=[32,32]", "img_scale=[64,32]", "warmup_iters=0"]
    return [*args, "train_split=validation", "val_split=", f"workers={workers}", "eval_every=0"]


def _metrics(seg: Path, data: Path, out: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict:
    assert main(_eval(seg, data, "--output", str(out), *extra)) == 0
    capsys.readouterr()
    return json.loads((out / "seg_metrics.json").read_text())


# ----------------------------------------------------------------------------------------------- silent failures
def test_eval_maps_dataset_classes_to_the_checkpoint_by_name(seg: Path, tmp_path: Path, capsys) -> None:
    # The same scenes, classes.txt in another order and the labels renumbered to match: the same scores.
    base = _base(seg)
    order = ["blue", "red", "yellow", "green"]
    permuted = _metrics(seg, write_split(tmp_path / "perm", order=order), tmp_path / "b", capsys)
    assert base["mIoU"] > 0.3  # the model has learnt the colours, so a wrong mapping cannot score the same
    assert list(permuted["per_class"]) == NAMES  # reported under the checkpoint's names, in its order
    assert permuted["IoU"] == pytest.approx(base["IoU"]) and permuted["Acc"] == pytest.approx(base["Acc"])
    # Other classes: refused, naming the names that do not match.
    other = write_split(tmp_path / "other")
    (other / "classes.txt").write_text("red\ngreen\nblue\npurple\n")
    cli_fails(capsys, _eval(seg, other), "classes.txt", "purple", "yellow")


def test_eval_warns_when_label_zero_is_a_named_class(seg: Path, tmp_path: Path, capsys, caplog) -> None:
    data = write_split(tmp_path / "zero", zero_is_class=True)
    with caplog.at_level(logging.WARNING, logger="internimage"):
        reduced = _metrics(seg, data, tmp_path / "a", capsys)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "label 0 looks like a real class" in warned[0], warned
    assert "--set reduce_zero_label=false" in warned[0] and "\n" not in warned[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="internimage"):
        raw = _metrics(seg, data, tmp_path / "b", capsys, "--set", "reduce_zero_label=false")
        cfg = SegmentationConfig.from_checkpoint(seg / "model.safetensors", data_root=str(seg / "data"))
        build_dataset(cfg, "validation", train=False)  # ADE20K's convention: 0 = unlabelled, no warning
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    assert raw["mIoU"] > reduced["mIoU"] + 0.2


def test_empty_test_ratios_is_refused(seg: Path, capsys) -> None:
    cli_fails(capsys, _eval(seg, seg / "data", "--set", "test_ratios=[]"), "test_ratios", "got []")


def test_predict_never_writes_over_an_input_or_an_existing_file(seg: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.open(seg / "data/images/validation/img_000.png").save(folder / "a.jpg")
    (folder / "a_label.png").write_bytes((seg / "data/annotations/validation/img_000.png").read_bytes())
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    predict = ["predict", "--task", "segmentation", "--checkpoint", str(seg / "model.safetensors"), "--device", "cpu"]
    for extra in ([], ["--overwrite"]):
        cli_fails(capsys, [*predict, str(folder), "--output", str(folder), *extra], "a_label.png", "one of the inputs")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    out = tmp_path / "out"
    assert main([*predict, str(folder / "a.jpg"), "--output", str(out)]) == 0
    capsys.readouterr()
    written = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert set(written) == {"a_seg.png", "a_label.png"}
    cli_fails(capsys, [*predict, str(folder / "a.jpg"), "--output", str(out)], "a_seg.png", "already exists")
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == written
    assert main([*predict, str(folder / "a.jpg"), "--output", str(out), "--overwrite"]) == 0


def test_eval_never_writes_over_an_existing_file(seg: Path, capsys) -> None:
    out = seg / "base"
    before = (out / "seg_metrics.json").stat().st_mtime_ns
    cli_fails(capsys, _eval(seg, seg / "data", "--output", str(out)), "seg_metrics.json", "--overwrite")
    assert (out / "seg_metrics.json").stat().st_mtime_ns == before
    assert _metrics(seg, seg / "data", out, capsys, "--overwrite")["IoU"] == pytest.approx(_base(seg)["IoU"])


# ----------------------------------------------------------------------------------------------- unclear errors
@pytest.mark.parametrize(
    ("kwargs", "needle", "workers"),
    [
        ({"label_mode": "RGB"}, "has mode RGB", 1),
        ({"label_mode": "LA"}, "has mode LA", 0),  # and in-process: the trainer's workers take 5 s to stop
        ({"label_size": 16}, "is (16, 16) but its image", 0),
        ({"stray_value": 9}, "holds value 9", 0),
    ],
    ids=["rgb", "la", "size", "value"],
)
def test_bad_label_maps_are_one_line_in_eval_and_train(kwargs, needle, workers, seg: Path, tmp_path: Path, capsys):
    data = write_split(tmp_path / "data", n=2, **kwargs)
    label = str(data / "annotations" / "validation" / "img_00")  # the file, whichever one a worker reads first
    line = cli_fails(capsys, _eval(seg, data, "--output", str(tmp_path / "m")), label, needle)  # 2 loader workers
    assert "Caught" not in line and not (tmp_path / "m").exists()
    cli_fails(capsys, _train(data, tmp_path / "run", workers), label, needle)
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_eval_without_annotations_is_refused_but_predict_runs(seg: Path, tmp_path: Path, capsys) -> None:
    data = write_split(tmp_path / "data")
    for label in (data / "annotations" / "validation").iterdir():
        label.unlink()
    (data / "annotations" / "validation").rmdir()
    cli_fails(capsys, _eval(seg, data), str(data / "annotations" / "validation"), "no label folder")
    images = str(data / "images" / "validation")
    ck = str(seg / "model.safetensors")
    argv = ["predict", "--task", "segmentation", "--checkpoint", ck, images, "--output", str(tmp_path / "p")]
    assert main([*argv, "--device", "cpu"]) == 0
    assert len(list((tmp_path / "p").iterdir())) == 6


@pytest.mark.parametrize(
    ("item", "needle"),
    [
        ("img_scale=[0,512]", "img_scale must be >= 1, got [0, 512]"),
        ("crop_size=[512,-1]", "crop_size must be >= 1"),
        ("ratio_range=[2.0,0.5]", "ratio_range must be [lo, hi] with 0 < lo <= hi, got [2.0, 0.5]"),
        ("ratio_range=[0,1]", "ratio_range must be"),
        ("num_points=0", "num_points must be >= 1, got 0"),
        ("aux_weight=-0.4", "aux_weight must be >= 0, got -0.4"),
        ("test_stride=[0,0]", "test_stride must be >= 1, got [0, 0]"),
        ("test_crop=[512,0]", "test_crop must be >= 1"),
        ("test_ratios=[]", "test_ratios must be one or more ratios > 0, got []"),
        ("test_ratios=[1.0,0]", "test_ratios must be"),
        ("cat_max_ratio=0", "cat_max_ratio must be in (0, 1], got 0.0"),
        ("cat_max_ratio=1.5", "cat_max_ratio must be in (0, 1]"),
    ],
)
def test_config_values_are_checked_when_the_config_is_built(item: str, needle: str, capsys) -> None:
    cli_fails(capsys, ["train", "--task", "segmentation", "--print-config", "--set", item], needle)


def test_zero_slide_stride_is_one_line(seg: Path, capsys) -> None:
    argv = _eval(seg, seg / "data", "--mode", "slide", "--set", "test_stride=[0,0]")
    cli_fails(capsys, argv, "test_stride must be >= 1, got [0, 0]")
