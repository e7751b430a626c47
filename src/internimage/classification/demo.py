"""A small InternImage trained on Fashion-MNIST in minutes on a CPU: recipe, data, task, time budget, prediction grid.

The ``internimage demo`` command (:mod:`internimage.commands.demo`) is argument parsing around this module::

    from internimage.data import find_fashion_mnist
    from internimage.classification.demo import FashionMNISTTask, demo_config
    from internimage.engine import Trainer

    cfg = demo_config("runs/demo")
    result = Trainer(cfg, FashionMNISTTask(cfg, find_fashion_mnist())).fit()  # result["top1"]

It uses the real engine (:class:`~internimage.engine.Trainer`, the classification task's loss and metrics) with a
one-channel InternImage on the native 28x28 images (levels of 7, 4, 2, 1, through the 3x3 stride-2 padding-1
convolutions of the official ``DownsampleLayer``); ``img_size=32`` zero-pads them so that every level's stride is
exact (8, 4, 2, 1), at 1.3x the cost per step.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..engine import DistInfo
from .config import ClassificationConfig
from .task import ClassificationTask

__all__ = [
    "DEMO_MODEL",
    "FashionMNISTTask",
    "TensorImages",
    "augment",
    "demo_config",
    "fit_to_budget",
    "prediction_grid",
]

logger = logging.getLogger(__name__)

# Fashion-MNIST pixel statistics (train split, [0, 1] scale).
MEAN, STD = 0.2860, 0.3530
NATIVE = 28  # Fashion-MNIST image side

DEMO_MODEL = dict(in_chans=1, channels=32, depths=(2, 2, 4, 2), groups=(2, 4, 8, 16), cls_scale=1.5)


def demo_config(output: str) -> ClassificationConfig:
    """The demo's recipe: a 3-epoch cosine AdamW run at 28 px with label smoothing, no augmentation, Mixup or drop path.

    Measured on 2 CPU cores: 90.79 % test top-1 (seed 0). In a run this short, augmentation costs accuracy (flips and
    2-pixel shifts: 88.88 %; flips only: 90.06 %); :class:`FashionMNISTTask` turns them on for longer runs.
    Activation recomputation is off (the model is tiny, memory is no concern, recomputing costs ~9 % per step) and
    the test split is evaluated once, at the end.
    """
    return ClassificationConfig(
        output=output,
        model="internimage_test_32",
        model_kwargs=dict(DEMO_MODEL, recompute_activations=False),
        drop_path_rate=0.0,
        num_classes=10,
        img_size=NATIVE,
        image_mode="L",
        mean=(MEAN,),
        std=(STD,),
        epochs=3,
        batch_size=128,
        lr=2e-3,
        lr_base_batch=0,
        warmup_lr=None,
        warmup_ratio=0.01,
        warmup_epochs=0.3,
        min_lr=1e-5,
        weight_decay=0.05,
        clip_grad=5.0,
        label_smoothing=0.1,
        mixup=0.0,
        cutmix=0.0,
        auto_augment="",
        reprob=0.0,
        ema=False,
        workers=0,
        log_every=50,
        eval_every=0,  # evaluate once, at the end
        keep_last=2,
    )


class TensorImages(Dataset):
    """In-memory uint8 images ``(N, 28, 28)`` -> normalised ``(1, S, S)`` float tensors, zero-padded to ``S``.

    Args:
        images: ``(N, 28, 28)`` uint8.
        labels: ``(N,)`` class indices.
        size: Output side ``S >= 28`` (``S - 28`` even); the border is black.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, size: int = NATIVE) -> None:
        if size < NATIVE or (size - NATIVE) % 2:
            raise ValueError(f"Fashion-MNIST images are 28x28: img_size must be 28 + an even number, got {size}")
        if images.ndim != 3 or images.shape[1:] != (NATIVE, NATIVE) or len(images) != len(labels):
            raise ValueError(f"expected (N, 28, 28) images and N labels, got {tuple(images.shape)} and {len(labels)}")
        pad = (size - NATIVE) // 2
        x = images.float().div_(255).sub_(MEAN).div_(STD)
        self.pad = pad
        self.images = F.pad(x, (pad,) * 4, value=-MEAN / STD).unsqueeze(1).contiguous()  # black after normalising
        self.labels = labels
        self.classes: list[str] = []

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


def augment(x: torch.Tensor, max_shift: int = 2) -> torch.Tensor:
    """Random horizontal flip and random translation by up to ``max_shift`` px, per sample, batched.

    Args:
        x: ``(N, C, H, W)`` images whose border is background (replicated into the uncovered strip).
    """
    n, _, h, w = x.shape
    flip = torch.rand(n, device=x.device) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    padded = F.pad(x, (max_shift,) * 4, mode="replicate")
    dy = torch.randint(0, 2 * max_shift + 1, (n,), device=x.device)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (N, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (N, 1, W)
    idx = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[idx, rows, cols].permute(0, 3, 1, 2).contiguous()


class FashionMNISTTask(ClassificationTask):
    """The classification task on in-memory Fashion-MNIST with cheap batched augmentation.

    Args:
        cfg: The run's config (``img_size`` 28, or more for zero padding).
        data_dir: Folder with the four IDX files (:func:`internimage.data.find_fashion_mnist`).
        train_limit: Use only the first N training images (0 = all).
        test_limit: Evaluate on the first N test images (0 = all).
        augment_train: Random flips and 2-pixel shifts of the training images (:func:`augment`).
    """

    def __init__(
        self,
        cfg: ClassificationConfig,
        data_dir: Path,
        train_limit: int = 0,
        test_limit: int = 0,
        augment_train: bool = False,
    ) -> None:
        from ..data import FASHION_MNIST_CLASSES

        super().__init__(cfg, classes=list(FASHION_MNIST_CLASSES))
        self.data_dir = Path(data_dir)
        self.train_limit = train_limit
        self.test_limit = test_limit
        self.augment_train = augment_train

    def build_datasets(self, info: DistInfo) -> tuple[Dataset, Dataset | None]:
        from ..data import load_fashion_mnist

        xs, ys = load_fashion_mnist(self.data_dir, "train")
        if self.train_limit:
            xs, ys = xs[: self.train_limit], ys[: self.train_limit]
        xt, yt = load_fashion_mnist(self.data_dir, "test")
        if self.test_limit:
            xt, yt = xt[: self.test_limit], yt[: self.test_limit]
        size = self.cfg.img_size
        return TensorImages(xs, ys, size), TensorImages(xt, yt, size)

    def collate_fn(self, train: bool) -> Any:
        from ..data import SkipCollate

        return SkipCollate()

    def training_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if self.augment_train:
            batch = dict(batch, image=augment(batch["image"]))
        return super().training_step(model, batch)


def fit_to_budget(
    cfg: ClassificationConfig, task: FashionMNISTTask, minutes: float, train_size: int, test_size: int = 10_000
) -> int:
    """Shorten the schedule so that training and the final evaluation fit in ``minutes`` on this machine.

    Times a few training steps and one evaluation batch of the real model (after two warm-up steps), then sets
    ``cfg.iters`` to the number of steps that fit, if that is fewer than the recipe's; the cosine schedule is laid
    out over the shorter run (a cut recipe, not a truncated one). The recipe is never lengthened.

    Args:
        cfg: The demo config; ``cfg.iters`` (and ``cfg.eval_every``) are changed in place when the budget is short.
        task: Builds the model to time.
        minutes: Wall-clock budget for training plus evaluation.
        train_size: Training images (the recipe's steps are ``epochs * train_size // batch_size``).
        test_size: Images of the final evaluation.

    Returns:
        The optimizer steps the run will take.
    """
    if minutes <= 0:
        raise ValueError(f"minutes must be > 0, got {minutes}")
    recipe = cfg.iters if cfg.iters > 0 else cfg.epochs * (train_size // cfg.batch_size)
    step_s, eval_batch_s = _time_steps(cfg, task)
    eval_s = eval_batch_s * math.ceil(test_size / cfg.batch_size)
    fits = int((minutes * 60 - eval_s) / step_s)
    logger.info("budget %.1f min: %.3f s per step, %.0f s to evaluate: %d steps fit", minutes, step_s, eval_s, fits)
    if fits >= recipe:
        return recipe
    if fits < 1:
        raise ValueError(f"--minutes {minutes} leaves no time to train here ({step_s:.2f} s per step)")
    logger.warning("the budget allows %d of the recipe's %d steps: expect a lower accuracy", fits, recipe)
    cfg.iters, cfg.eval_every = fits, 0
    return fits


def _time_steps(
    cfg: ClassificationConfig, task: FashionMNISTTask, warmup: int = 2, timed: int = 5
) -> tuple[float, float]:
    """Seconds per training step (forward, backward, AdamW) and per evaluation batch, on random images."""
    torch.manual_seed(0)
    model = task.build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    x = torch.randn(cfg.batch_size, 1, cfg.img_size, cfg.img_size)
    y = torch.randint(0, task.num_classes, (cfg.batch_size,))
    model.train()
    for i in range(warmup + timed):
        if i == warmup:
            t0 = time.perf_counter()
        loss = F.cross_entropy(model(augment(x) if task.augment_train else x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    step_s = (time.perf_counter() - t0) / timed
    model.eval()
    with torch.no_grad():
        model(x)
        t0 = time.perf_counter()
        model(x)
    return step_s, time.perf_counter() - t0


@torch.no_grad()
def prediction_grid(model: nn.Module, images: TensorImages, classes: list[str], path: Path, n: int = 16) -> str:
    """Predict ``n`` test images (a fixed random draw), draw them with predicted / true labels to ``path``.

    Returns:
        ``"correct/n"`` for the drawn images.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_write

    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(images), generator=g)[:n]
    device = next(model.parameters()).device
    x = images.images[idx].to(device)
    model.eval()
    probs = model(x).float().softmax(-1).cpu()
    score, pred = probs.max(-1)
    truth = images.labels[idx]
    cols = 4
    fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(2.2 * cols, 2.5 * math.ceil(n / cols)))
    p = images.pad
    for ax, i in zip(axes.flat, range(n)):
        img = x[i, 0].cpu() * STD + MEAN
        ax.imshow(img[p : img.shape[0] - p, p : img.shape[1] - p], cmap="gray", vmin=0, vmax=1)
        ok = bool(pred[i] == truth[i])
        ax.set_title(f"{classes[int(pred[i])]} {score[i]:.0%}", color="green" if ok else "red", fontsize=9)
        ax.set_xlabel(f"true: {classes[int(truth[i])]}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("InternImage demo: Fashion-MNIST test predictions (green = correct)")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return f"{int((pred == truth).sum())}/{n}"
