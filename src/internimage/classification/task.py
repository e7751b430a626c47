"""The classification task for the engine: data, loss (Mixup / CutMix, label smoothing), top-1/top-5 evaluation."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..engine import DistInfo, Task, all_reduce_sum, real_sample_count
from ..models.internimage import InternImageBlock
from .config import META_KEY, ClassificationConfig

__all__ = [
    "IMAGENET_1K",
    "IMAGENET_22K",
    "ClassificationTask",
    "build_val_dataset",
    "class_names",
    "imagenet_22k_to_1k_indices",
    "topk_correct",
]

logger = logging.getLogger(__name__)

IMAGENET_1K = 1000
IMAGENET_22K = 21841


# ----------------------------------------------------------------------------------------------- task
def imagenet_22k_to_1k_indices() -> torch.Tensor:
    """Index into 21841-class logits of each ImageNet-1k class, -1 where the 22k list lacks the synset.

    Built from the synset ids of timm's ImageNet info; the 21841-synset release lacks one 1k synset
    (``n04399382``, teddy bear), which therefore can never be predicted by a mapped 22k model.
    """
    from timm.data import ImageNetInfo

    info22k, info1k = ImageNetInfo("imagenet-22k"), ImageNetInfo("imagenet-1k")
    where = {s: i for i, s in enumerate(info22k.label_names())}
    missing = [s for s in info1k.label_names() if s not in where]
    if missing:
        logger.warning("22k->1k: %d ImageNet-1k synset(s) absent from the 22k list: %s", len(missing), missing)
    return torch.tensor([where.get(s, -1) for s in info1k.label_names()])


def class_names(num_classes: int) -> list[str]:
    """Readable names for ImageNet-sized heads (timm's ImageNet info), else ``['0', '1', ...]``."""
    from timm.data import ImageNetInfo

    if num_classes in (IMAGENET_1K, IMAGENET_22K):
        info = ImageNetInfo("imagenet-1k" if num_classes == IMAGENET_1K else "imagenet-22k")
        return [info.index_to_description(i).split(",")[0] for i in range(num_classes)]
    return [str(i) for i in range(num_classes)]


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """Number of samples whose target is in the top-k logits, for each k (k capped at the class count).

    Args:
        logits: ``(N, K)``.
        target: ``(N,)`` class indices.
    """
    kmax = min(max(ks), logits.shape[1])
    pred = logits.topk(kmax, dim=1).indices
    hits = pred.eq(target[:, None])
    return [int(hits[:, : min(k, kmax)].any(1).sum()) for k in ks]


class ClassificationTask(Task):
    """Image classification with the official recipe (timm augmentation, Mixup/CutMix, label smoothing).

    Args:
        cfg: :class:`~internimage.configs.ClassificationConfig`.
        train_set: Use this dataset instead of ``cfg.train_data`` (items ``(image tensor, label)`` or None).
        val_set: Same for evaluation.
        classes: Class names when datasets are given directly.
    """

    primary_metric = "top1"
    fsdp_unit_types = (InternImageBlock,)

    def __init__(
        self,
        cfg: ClassificationConfig,
        train_set: Dataset | None = None,
        val_set: Dataset | None = None,
        classes: list[str] | None = None,
    ) -> None:
        super().__init__(cfg)
        self.cfg: ClassificationConfig = cfg
        self._train_set = train_set
        self._val_set = val_set
        self._classes = classes
        self._mixup: Any = None
        self._map22k: torch.Tensor | None = None

    # data
    def _build_train(self) -> Dataset:
        from ..data import build_image_dataset, build_train_transform

        c = self.cfg
        if not c.train_data:
            raise ValueError("no training data: pass --train-data (an image folder or a 'path label' list)")
        tf = build_train_transform(c.img_size, c.auto_augment, c.color_jitter, c.reprob, c.interpolation, c.mean, c.std)
        dataset = build_image_dataset(
            c.train_data, tf, c.image_mode, c.data_root or None, locations=_meta(c.train_meta)
        )
        _check_training_classes(dataset.classes, c.num_classes, c.train_data)
        return dataset

    def _build_val(self) -> Dataset | None:
        from ..data import build_eval_transform, build_image_dataset

        c = self.cfg
        if not c.val_data:
            return None
        tf = build_eval_transform(c.img_size, c.interpolation, c.mean, c.std)
        meta = _meta(c.val_meta)
        return build_image_dataset(c.val_data, tf, c.image_mode, c.data_root or None, self.classes, meta)

    @property
    def classes(self) -> list[str]:
        if self._classes is None:
            if self._train_set is None and self.cfg.train_data:
                self._train_set = self._build_train()
            if self._train_set is not None and hasattr(self._train_set, "classes"):
                self._classes = list(self._train_set.classes)
            elif self.cfg.num_classes > 0:
                self._classes = class_names(self.cfg.num_classes)
            else:
                raise ValueError("cannot tell the number of classes: set num_classes or give training data")
        return self._classes

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes if self.cfg.num_classes > 0 else len(self.classes)

    def build_datasets(self, info: DistInfo) -> tuple[Dataset, Dataset | None]:
        if self._train_set is None:
            self._train_set = self._build_train()
        if self._val_set is None:
            self._val_set = self._build_val()
        return self._train_set, self._val_set

    def collate_fn(self, train: bool) -> Callable[[list[Any]], Any]:
        from ..data import SkipCollate

        return SkipCollate()

    # model
    def build_model(self) -> nn.Module:
        from ..models import create_model

        c = self.cfg
        kwargs = dict(c.model_kwargs)
        if c.drop_path_rate is not None:
            kwargs["drop_path_rate"] = c.drop_path_rate
        kwargs["num_classes"] = self.num_classes
        return create_model(c.model, pretrained=c.pretrained, checkpoint_path=c.init_checkpoint or None, **kwargs)

    def export_metadata(self) -> dict[str, str]:
        """``task`` and the model fields as JSON under ``classification_config``: every task's one format."""
        c = self.cfg
        fields = {
            "model": c.model,
            "model_kwargs": dict(c.model_kwargs, num_classes=self.num_classes),
            "classes": list(self.classes),
            "img_size": c.img_size,
            "mean": list(c.mean),
            "std": list(c.std),
            "image_mode": c.image_mode,
        }
        return {"task": "classification", META_KEY: json.dumps(fields)}

    # steps
    def _mixup_fn(self) -> Any:
        c = self.cfg
        if self._mixup is None and (c.mixup > 0 or c.cutmix > 0) and c.mixup_prob > 0:
            from timm.data import Mixup

            self._mixup = Mixup(
                mixup_alpha=c.mixup,
                cutmix_alpha=c.cutmix,
                prob=c.mixup_prob,
                switch_prob=c.mixup_switch_prob,
                label_smoothing=c.label_smoothing,
                num_classes=self.num_classes,
            )
        return self._mixup

    def training_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        x, y, meta = batch["image"], batch["target"], batch.get("meta")
        if x.shape[0] < 2:
            # Unreadable images left fewer than 2 (BatchNorm needs 2). Still run a forward through the (DDP)
            # model so every rank joins the gradient all-reduce, with a loss of exactly zero.
            if x.shape[0] == 1:
                dummy = x.expand(2, *x.shape[1:])
            else:
                chans = int(self.cfg.model_kwargs.get("in_chans", 3))
                dummy = torch.zeros(2, chans, self.cfg.img_size, self.cfg.img_size, device=x.device)
            return {"loss": model(dummy).float().sum() * 0.0}
        mixup = self._mixup_fn()
        if mixup is not None:
            if x.shape[0] % 2:  # timm's batch mixup pairs samples; a skipped image can leave an odd batch
                x, y = x[:-1], y[:-1]
                meta = meta[:-1] if meta is not None else None
            x, soft = mixup(x, y)
            logits = _forward(model, x, meta)
            loss = torch.sum(-soft * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        else:
            logits = _forward(model, x, meta)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=self.cfg.label_smoothing)
        return {"loss": loss}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, info: DistInfo) -> dict[str, float]:
        from tqdm.auto import tqdm

        remaining = real_sample_count(loader)
        counts = torch.zeros(5, dtype=torch.float64)  # top1, top5, loss sum, samples, skipped
        for batch in tqdm(loader, desc="eval", disable=not info.is_main, leave=False, dynamic_ncols=True):
            counts[4] += batch.get("num_skipped", 0)
            if batch["image"].shape[0] == 0:  # every image of the batch was unreadable
                continue
            x, y = batch["image"].to(info.device), batch["target"].to(info.device)
            meta = batch["meta"].to(info.device) if "meta" in batch else None
            if remaining is not None:  # FSDP: drop the padding at the end of the last shard
                positions = len(y) + int(batch.get("num_skipped", 0))
                keep = max(min(positions, remaining) - int(batch.get("num_skipped", 0)), 0)
                x, y = x[:keep], y[:keep]
                meta = meta[:keep] if meta is not None else None
                remaining -= positions
            if len(y) == 0:
                # Pure padding: FSDP needs every rank to run the same forwards, so run it and count nothing.
                model(batch["image"].to(info.device))
                continue
            logits = self._map_logits(_forward(model, x, meta)).float()
            top1, top5 = topk_correct(logits, y)
            counts += torch.tensor(
                [top1, top5, float(F.cross_entropy(logits, y, reduction="sum")), len(y), 0], dtype=torch.float64
            )
        all_reduce_sum(counts.to(info.device) if info.device.type == "cuda" else counts)
        n = max(float(counts[3]), 1.0)
        return {
            "top1": float(counts[0]) / n * 100,
            "top5": float(counts[1]) / n * 100,
            "loss": float(counts[2]) / n,
            "samples": float(counts[3]),
            "skipped": float(counts[4]),
        }

    def _map_logits(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.cfg.map22kto1k:
            return logits
        if logits.shape[1] != IMAGENET_22K:
            raise ValueError(f"map22kto1k needs a {IMAGENET_22K}-class model, this one has {logits.shape[1]}")
        if self._map22k is None:
            self._map22k = imagenet_22k_to_1k_indices()
        index = self._map22k.to(logits.device)
        mapped = logits[:, index.clamp(min=0)]
        return mapped.masked_fill(index[None] < 0, float("-inf"))


def _meta(path: str) -> str | None:
    return path or None


def _forward(model: nn.Module, x: torch.Tensor, meta: torch.Tensor | None) -> torch.Tensor:
    """Logits of images, with their date / location inputs when the data has them (iNaturalist meta branches)."""
    return model(x) if meta is None else model(x, meta)


def _check_training_classes(classes: list[str], num_classes: int, where: str) -> None:
    """Refuse training data whose classes cannot fit the head (no silent 8-class head from one stray label)."""
    shown = ", ".join(classes[:5]) + (f", +{len(classes) - 5} more" if len(classes) > 5 else "")
    if num_classes > 0 and len(classes) > num_classes:
        raise ValueError(f"{where} has {len(classes)} classes ({shown}) but num_classes is {num_classes}")
    if num_classes <= 0 and len(classes) < 2:
        raise ValueError(f"{where} has a single class ({shown}): a classifier needs two or more")


def build_val_dataset(
    path: str | Path,
    transform: Callable[[Any], torch.Tensor],
    info: dict[str, Any],
    map22kto1k: bool = False,
    locations: str | None = None,
) -> Dataset:
    """An evaluation set labelled in the model's class order.

    The sub-folders of an image folder are matched by name to the class names stored with the checkpoint (a
    folder holding only ``dog`` images is labelled ``dog``, not class 0); a folder name that is not a class of the
    checkpoint is refused. Without stored names (official weights) folders are taken in sorted order, the ImageNet
    convention. A ``path label`` list's labels are class indices of the model.

    Args:
        path: Image folder or list file.
        transform: PIL image -> tensor.
        info: The second result of :func:`load_classifier`.
        map22kto1k: Labels are ImageNet-1k indices (a 22k model evaluated on 1k).
        locations: iNaturalist ``*_locations.json`` (date / location inputs of a model with meta branches).

    Raises:
        ValueError: folder names or labels that are not classes of the model (one line naming them).
    """
    from ..data import build_image_dataset

    classes = class_names(IMAGENET_1K) if map22kto1k else list(info["classes"])
    root = Path(path)
    if root.is_dir() and info.get("classes_stored") and not map22kto1k:
        found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        unknown = [name for name in found if name not in classes]
        if unknown:
            raise ValueError(
                f"{root}: folder(s) {', '.join(unknown[:5])} are not classes of the checkpoint "
                f"({', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''}); name the folders after them"
            )
        return build_image_dataset(root, transform, info["image_mode"], classes=classes, locations=locations)
    if root.is_dir():
        dataset = build_image_dataset(root, transform, info["image_mode"])
        if len(dataset.classes) > len(classes):
            raise ValueError(f"{root} has {len(dataset.classes)} classes, the model predicts {len(classes)}")
        logger.info("%s: the checkpoint stores no class names; folders are labelled in sorted order", root)
        return dataset
    return build_image_dataset(root, transform, info["image_mode"], classes=classes, locations=locations)
