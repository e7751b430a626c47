"""Detection training: losses fall, a tiny detector overfits 4 images, and train/eval/predict run from the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("faster_coco_eval")

from internimage.detection.data import CocoDetection, Compose, Resize, collate_detection  # noqa: E402
from internimage.detection.evaluation import coco_evaluate, predictions_to_coco  # noqa: E402
from internimage.detection.models import build_detector  # noqa: E402
from test_detection import CASCADE, MASK_RCNN, make_coco  # noqa: E402


@pytest.fixture(scope="module")
def coco4(tmp_path_factory: pytest.TempPathFactory):
    return make_coco(tmp_path_factory.mktemp("coco4_train"), 4)


def _fit(model: torch.nn.Module, batch: dict, steps: int, lr: float) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    model.train()
    history = []
    for _ in range(steps):
        losses = model(batch["images"], batch["targets"])
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    return history


@pytest.mark.parametrize("arch", ["mask_rcnn", "cascade_mask_rcnn"])
def test_a_few_steps_reduce_the_loss(coco4, arch):
    ann, images = coco4
    ds = CocoDetection(ann, images, Compose([Resize([(64, 48)])]), train=True)
    batch = collate_detection([ds[i] for i in range(4)])
    torch.manual_seed(0)
    kwargs = MASK_RCNN if arch == "mask_rcnn" else dict(CASCADE, head_convs=1, box_batch_size_per_image=16)
    model = build_detector(arch, "internimage_test_32", 2, **kwargs)
    history = _fit(model, batch, 6, 1e-3)
    assert all(np.isfinite(history))
    assert np.mean(history[-2:]) < 0.8 * np.mean(history[:2]), history


@pytest.mark.slow
def test_overfitting_four_images_reaches_box_ap_above_half(coco4):
    ann, images = coco4
    ds = CocoDetection(ann, images, train=True)
    batch = collate_detection([ds[i] for i in range(4)])
    torch.manual_seed(0)
    kwargs = dict(MASK_RCNN, mask_channels=16, mask_convs=1)
    model = build_detector("mask_rcnn", "internimage_test_32", 2, **kwargs)
    _fit(model, batch, 100, 2e-3)  # 60 steps lands at AP ~0.5 on some machines: keep a margin
    model.eval()
    with torch.no_grad():
        preds = model(batch["images"], orig_sizes=[t["orig_size"] for t in batch["targets"]])
    results = predictions_to_coco(preds, [t["image_id"] for t in batch["targets"]], ds.cat_ids)
    metrics = coco_evaluate(ann, results)
    assert metrics["bbox_mAP"] > 0.5, metrics
    assert metrics["segm_mAP"] > 0.3, metrics


def test_cli_train_resume_eval_predict(coco4, tmp_path, capsys):
    from PIL import Image

    from internimage.cli import main

    ann, images = coco4
    root = ann.parent
    kwargs = {k: v for k, v in MASK_RCNN.items() if k != "backbone_overrides"}
    common = [
        "--task", "detection", "--data-root", str(root), "--model", "internimage_test_32", "--num-classes", "2",
        "--device", "cpu",
    ]  # fmt: skip
    sets = [
        "train_ann=ann.json", "train_images=images", "val_ann=ann.json", "val_images=images", "img_scale=[64,48]",
        f"model_kwargs={json.dumps(kwargs)}", "workers=0", "warmup_iters=1", "lr=1e-3", "log_every=1",
    ]  # fmt: skip
    run = tmp_path / "run"
    assert main(["train", *common, "--output", str(run), "--epochs", "1", "--batch-size", "2", *sets]) == 0
    assert (run / "model.safetensors").is_file() and (run / "checkpoints").is_dir()
    # Resume the finished 1-epoch run to 2 epochs: it continues at step 2, not from scratch.
    assert (
        main(["train", *common, "--output", str(run), "--epochs", "2", "--batch-size", "2", "--resume", "auto", *sets])
        == 0
    )
    result = json.loads((run / "result.json").read_text())
    assert result["step"] == 4 and "bbox_mAP" in result and "segm_mAP" in result
    capsys.readouterr()

    # eval rebuilds the model from the metadata stored in model.safetensors.
    code = main(["eval", "--task", "detection", "--checkpoint", str(run / "model.safetensors"), "--data-root",
                 str(root), "--out", str(tmp_path / "ev"), "val_ann=ann.json", "val_images=images"])  # fmt: skip
    assert code == 0
    metrics = json.loads((tmp_path / "ev" / "det_metrics.json").read_text())
    assert metrics["bbox_mAP"] == pytest.approx(result["bbox_mAP"], abs=1e-6)
    assert "bbox_mAP" in capsys.readouterr().out

    out = tmp_path / "pred"
    code = main(["predict", "--task", "detection", "--checkpoint", str(run / "model.safetensors"),
                 str(images / "000.png"), "--output", str(out), "--score-thresh", "0.0"])  # fmt: skip
    assert code == 0
    records = json.loads((out / "predictions.json").read_text())
    assert records[0]["detections"] and records[0]["detections"][0]["label"] in ("box", "disc")
    drawn = np.asarray(Image.open(out / "000.png"))
    original = np.asarray(Image.open(images / "000.png").convert("RGB"))
    assert drawn.shape == original.shape and (drawn != original).any()

    assert main(["eval", "--task", "detection", "--checkpoint", str(tmp_path / "missing.safetensors")]) == 1
    assert "checkpoint not found" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_fsdp2_two_processes(coco4, tmp_path):
    import os
    import subprocess
    import sys

    ann, images = coco4
    kwargs = {k: v for k, v in MASK_RCNN.items() if k != "backbone_overrides"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "internimage.cli", "train", "--task", "detection", "--data-root", str(ann.parent),
        "--model", "internimage_test_32", "--num-classes", "2", "--device", "cpu", "--output", str(tmp_path / "run"),
        "--epochs", "1", "--batch-size", "1", "train_ann=ann.json", "train_images=images", "val_ann=ann.json",
        "val_images=images", "img_scale=[64,48]", f"model_kwargs={json.dumps(kwargs)}", "workers=0",
        "warmup_iters=1", "strategy=fsdp",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("done: step 2") == 1  # 4 images / (2 processes x 1): printed by rank 0 only
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert "bbox_mAP" in result and (tmp_path / "run" / "model.safetensors").is_file()
