"""Classification: ``internimage train|eval|predict|extract`` and the :class:`ClassificationTask` of the engine.

Train (one process or ``torchrun``)::

    internimage train --preset internimage_t_1k_224 --train-data /data/train --val-data /data/val \\
        --set batch_size=64 epochs=30 --output runs/t
    torchrun --nproc_per_node 8 -m internimage.cli train --preset internimage_t_1k_224 ...

Any config field can be overridden with ``--set key=value`` (YAML values); ``--config run/config.yaml`` reloads a
saved run's config. ``eval``, ``predict`` and ``extract`` take ``--checkpoint`` in any supported format.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..configs import ClassificationConfig, list_presets, load_preset
from ..data.datasets import collect_images
from ..engine import (
    DistInfo,
    Task,
    Trainer,
    all_reduce_sum,
    apply_overrides,
    load_config,
    real_sample_count,
)
from ..engine.distributed import unwrap_model

logger = logging.getLogger(__name__)

_IMAGENET_1K = 1000
_IMAGENET_22K = 21841


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

    if num_classes in (_IMAGENET_1K, _IMAGENET_22K):
        info = ImageNetInfo("imagenet-1k" if num_classes == _IMAGENET_1K else "imagenet-22k")
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
        return build_image_dataset(c.train_data, tf, c.image_mode, c.data_root or None)

    def _build_val(self) -> Dataset | None:
        from ..data import build_eval_transform, build_image_dataset

        c = self.cfg
        if not c.val_data:
            return None
        tf = build_eval_transform(c.img_size, c.interpolation, c.mean, c.std)
        return build_image_dataset(c.val_data, tf, c.image_mode, c.data_root or None, classes=self.classes)

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
        c = self.cfg
        kwargs = dict(c.model_kwargs, num_classes=self.num_classes)
        return {
            "task": "classification",
            "model": c.model,
            "model_kwargs": json.dumps(kwargs),
            "classes": json.dumps(self.classes),
            "img_size": str(c.img_size),
            "mean": json.dumps(list(c.mean)),
            "std": json.dumps(list(c.std)),
            "image_mode": c.image_mode,
        }

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
        x, y = batch["image"], batch["target"]
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
            x, soft = mixup(x, y)
            logits = model(x)
            loss = torch.sum(-soft * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        else:
            logits = model(x)
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
            if remaining is not None:  # FSDP: drop the padding at the end of the last shard
                positions = len(y) + int(batch.get("num_skipped", 0))
                keep = max(min(positions, remaining) - int(batch.get("num_skipped", 0)), 0)
                x, y = x[:keep], y[:keep]
                remaining -= positions
            if len(y) == 0:
                # Pure padding: FSDP needs every rank to run the same forwards, so run it and count nothing.
                model(batch["image"].to(info.device))
                continue
            logits = self._map_logits(model(x)).float()
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
        if logits.shape[1] != _IMAGENET_22K:
            raise ValueError(f"map22kto1k needs a {_IMAGENET_22K}-class model, this one has {logits.shape[1]}")
        if self._map22k is None:
            self._map22k = imagenet_22k_to_1k_indices()
        index = self._map22k.to(logits.device)
        mapped = logits[:, index.clamp(min=0)]
        return mapped.masked_fill(index[None] < 0, float("-inf"))


# ----------------------------------------------------------------------------------------------- model loading
def _checkpoint_metadata(path: Path) -> dict[str, str]:
    """Metadata our runs store: safetensors header, or ``metadata``/``config`` of a training checkpoint."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {})
    from ..models.checkpoint import read_checkpoint

    ckpt = read_checkpoint(path)
    meta = dict(ckpt.get("metadata") or {}) if isinstance(ckpt.get("metadata"), dict) else {}
    if "model" not in meta and isinstance(ckpt.get("config"), str):
        cfg = json.loads(ckpt["config"])
        if "model" in cfg:
            meta.setdefault("model", cfg["model"])
            meta.setdefault("model_kwargs", json.dumps(cfg.get("model_kwargs", {})))
            meta.setdefault("img_size", str(cfg.get("img_size", 224)))
    return meta


def _head_size(path: Path, use_ema: bool) -> int | None:
    from ..models.checkpoint import detect_format, normalize_state_dict, read_checkpoint

    fmt, sd = detect_format(read_checkpoint(path), use_ema=use_ema)
    sd, _ = normalize_state_dict(sd, fmt)
    weight = sd.get("head.weight")
    return int(weight.shape[0]) if weight is not None else None


def load_classifier(
    checkpoint: str | None, model: str | None = None, use_ema: bool = False, pretrained: bool = False
) -> tuple[nn.Module, dict[str, Any]]:
    """Build a classifier and load weights in any supported format.

    The architecture comes from ``model`` or, for files written by our runs, from their metadata; the number of
    classes from the checkpoint's head.

    Returns:
        ``(model in eval mode, info)`` with ``info`` keys ``classes``, ``img_size``, ``mean``, ``std``,
        ``image_mode``.
    """
    from ..models import create_model

    meta: dict[str, str] = {}
    path = Path(checkpoint) if checkpoint else None
    if path is not None:
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        meta = _checkpoint_metadata(path)
    name = model or meta.get("model")
    if name is None:
        raise ValueError(f"{path} does not name its architecture: pass --model (see `internimage info`)")
    kwargs = json.loads(meta.get("model_kwargs", "{}")) if not model or model == meta.get("model") else {}
    if path is not None:
        head = _head_size(path, use_ema)
        if head is not None:
            kwargs["num_classes"] = head
    net = create_model(name, pretrained=pretrained, **kwargs)
    if path is not None:  # after creation: create_model would treat num_classes as "new head, skip it"
        from ..models import load_checkpoint

        load_checkpoint(net, path, strict=True, use_ema=use_ema)
    net.eval()
    from ..models.internimage import _MODEL_SPECS

    default_size = _MODEL_SPECS[name][1]["input_size"][-1]
    classes = json.loads(meta["classes"]) if "classes" in meta else class_names(net.num_classes)
    info = {
        "classes": classes,
        "img_size": int(meta.get("img_size", default_size)),
        "mean": tuple(json.loads(meta["mean"])) if "mean" in meta else (0.485, 0.456, 0.406),
        "std": tuple(json.loads(meta["std"])) if "std" in meta else (0.229, 0.224, 0.225),
        "image_mode": meta.get("image_mode", "RGB"),
    }
    return net, info


class _PathDataset(Dataset):
    def __init__(self, paths: list[Path], transform: Callable[[Any], torch.Tensor], mode: str) -> None:
        self.paths, self.transform, self.mode = paths, transform, mode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | None:
        from ..data.datasets import _load_image

        try:
            return self.transform(_load_image(str(self.paths[i]), self.mode)), i
        except Exception as err:  # unreadable image: reported, not fatal
            logger.warning("skipping unreadable image %s: %s", self.paths[i], err)
            return None


def _image_loader(paths: list[Path], info: dict[str, Any], img_size: int | None, batch_size: int) -> DataLoader:
    from ..data import SkipCollate, build_eval_transform

    size = img_size or info["img_size"]
    tf = build_eval_transform(size, mean=info["mean"], std=info["std"])
    return DataLoader(_PathDataset(paths, tf, info["image_mode"]), batch_size=batch_size, collate_fn=SkipCollate())


# ----------------------------------------------------------------------------------------------- commands
def _train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default=None, help=f"official recipe ({', '.join(list_presets())})")
    parser.add_argument("--config", default=None, help="YAML config (e.g. a run's config.yaml) instead of a preset")
    parser.add_argument("--model", default=None, help="model name (default: the preset's)")
    parser.add_argument("--train-data", default=None, help="image folder (root/<class>/<img>) or 'path label' list")
    parser.add_argument("--val-data", default=None, help="image folder or list for evaluation")
    parser.add_argument("--output", default=None, help="run folder")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="per process")
    parser.add_argument("--lr", type=float, default=None, help="lr per lr_base_batch images")
    parser.add_argument("--accum-steps", type=int, default=None, help="gradient accumulation")
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default=None)
    parser.add_argument("--strategy", choices=("ddp", "fsdp"), default=None, help="multi-process strategy")
    parser.add_argument("--grad-checkpointing", action="store_true", default=None)
    parser.add_argument("--init-checkpoint", default=None, help="start from these weights (any format)")
    parser.add_argument("--resume", nargs="?", const="auto", default=None, help="'auto' or a checkpoint path")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override any config field")
    parser.add_argument("--print-config", action="store_true", help="print the effective config and exit")


def build_train_config(args: argparse.Namespace) -> ClassificationConfig:
    """Preset or YAML, then named flags, then ``--set`` overrides."""
    if args.config:
        cfg = load_config(ClassificationConfig, args.config)
    else:
        cfg = load_preset(args.preset or "internimage_t_1k_224")
    flags = {
        "model": args.model,
        "train_data": args.train_data,
        "val_data": args.val_data,
        "output": args.output,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "accum_steps": args.accum_steps,
        "amp": args.amp,
        "strategy": args.strategy,
        "grad_checkpointing": args.grad_checkpointing,
        "init_checkpoint": args.init_checkpoint,
        "resume": args.resume,
        "workers": args.workers,
        "device": args.device,
    }
    cfg = apply_overrides(cfg, {k: v for k, v in flags.items() if v is not None})
    cfg = apply_overrides(cfg, args.set)
    cfg.validate()
    return cfg


def _run_train(args: argparse.Namespace) -> int:
    import yaml

    cfg = build_train_config(args)
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    trainer = Trainer(cfg, ClassificationTask(cfg))
    result = trainer.fit()
    if trainer.info is not None and trainer.info.is_main:
        print(json.dumps(result))
        if trainer.preempted:
            print(f"stopped by SIGTERM; resume with --resume auto --output {cfg.output}")
    from ..engine.distributed import cleanup_distributed

    cleanup_distributed()
    return 0


def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=None, help="weights in any supported format")
    parser.add_argument("--model", default=None, help="model name (needed unless the checkpoint is ours)")
    parser.add_argument("--pretrained", action="store_true", help="official weights from the hub")
    parser.add_argument("--val-data", required=True, help="image folder or 'path label' list")
    parser.add_argument("--img-size", type=int, default=None, help="default: the model's")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--use-ema", action="store_true", help="EMA weights of a training checkpoint")
    parser.add_argument("--map22kto1k", action="store_true", help="evaluate a 22k model on ImageNet-1k labels")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--json", action="store_true", help="print JSON")


def _run_eval(args: argparse.Namespace) -> int:
    from ..data import SkipCollate, build_eval_transform, build_image_dataset
    from ..engine import EvalShardSampler, init_distributed

    if not args.checkpoint and not args.pretrained:
        raise ValueError("pass --checkpoint FILE or --pretrained")
    info = init_distributed(args.device)
    model, meta = load_classifier(args.checkpoint, args.model, args.use_ema, args.pretrained)
    model.to(info.device)
    size = args.img_size or meta["img_size"]
    tf = build_eval_transform(size, mean=meta["mean"], std=meta["std"])
    classes = meta["classes"] if not args.map22kto1k else class_names(_IMAGENET_1K)
    dataset = build_image_dataset(args.val_data, tf, meta["image_mode"])
    if len(dataset.classes) > len(classes):
        raise ValueError(f"{args.val_data} has {len(dataset.classes)} classes, the model predicts {len(classes)}")
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        sampler=EvalShardSampler(len(dataset), info.rank, info.world_size),
        num_workers=args.workers,
        collate_fn=SkipCollate(),
    )
    cfg = ClassificationConfig(map22kto1k=args.map22kto1k, num_classes=len(classes))
    metrics = ClassificationTask(cfg, classes=classes).evaluate(model, loader, info)
    if info.is_main:
        if args.json:
            print(json.dumps(metrics))
        else:
            print(
                f"top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  loss {metrics['loss']:.4f}  "
                f"({int(metrics['samples'])} images, {int(metrics['skipped'])} unreadable skipped)"
            )
    return 0


def _predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="images or folders")
    parser.add_argument("--checkpoint", default=None, help="weights in any supported format")
    parser.add_argument("--model", default=None, help="model name (needed unless the checkpoint is ours)")
    parser.add_argument("--pretrained", action="store_true", help="official weights from the hub")
    parser.add_argument("--use-ema", action="store_true")
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--img-size", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--json", action="store_true", help="JSON lines instead of a table")


@torch.no_grad()
def predict(
    model: nn.Module, loader: DataLoader, paths: list[Path], classes: list[str], topk: int, device: torch.device
) -> list[dict[str, Any]]:
    """Top-k ``[{'image', 'top': [{'label', 'index', 'score'}, ...]}]`` for every readable image."""
    from tqdm.auto import tqdm

    out = []
    for batch in tqdm(loader, desc="predict", leave=False, disable=len(loader) < 2):
        if batch["image"].numel() == 0:
            continue
        probs = model(batch["image"].to(device)).float().softmax(-1).cpu()
        scores, idx = probs.topk(min(topk, probs.shape[1]), dim=1)
        for i, s, k in zip(batch["target"].tolist(), scores.tolist(), idx.tolist()):
            top = [{"label": classes[j] if j < len(classes) else str(j), "index": j, "score": v} for j, v in zip(k, s)]
            out.append({"image": str(paths[i]), "top": top})
    return out


def _run_predict(args: argparse.Namespace) -> int:
    from ..engine import init_distributed

    info = init_distributed(args.device)
    model, meta = load_classifier(args.checkpoint, args.model, args.use_ema, args.pretrained)
    model.to(info.device)
    paths = collect_images(args.inputs, recursive=True)
    loader = _image_loader(paths, meta, args.img_size, args.batch_size)
    results = predict(model, loader, paths, meta["classes"], args.topk, info.device)
    if args.json:
        for r in results:
            print(json.dumps(r))
        return 0
    width = max(len(r["image"]) for r in results) if results else 10
    for r in results:
        tops = "  ".join(f"{t['label']} {t['score']:.3f}" for t in r["top"])
        print(f"{r['image']:<{width}}  {tops}")
    skipped = len(paths) - len(results)
    if skipped:
        print(f"{skipped} unreadable image(s) skipped")
    return 0


def _extract_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="images or folders")
    parser.add_argument("--checkpoint", default=None, help="weights in any supported format")
    parser.add_argument("--model", default=None, help="model name (needed unless the checkpoint is ours)")
    parser.add_argument("--pretrained", action="store_true")
    parser.add_argument("--stages", default="0,1,2,3", help="comma-separated levels 0-3, and/or 'pooled'")
    parser.add_argument("--output", required=True, help="folder (.npy files) or a .safetensors file")
    parser.add_argument("--img-size", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")


@torch.no_grad()
def extract_features(
    model: nn.Module, loader: DataLoader, paths: list[Path], stages: list[str], device: torch.device
) -> dict[str, dict[str, torch.Tensor]]:
    """``{image path: {'stage{i}': (C_i, H_i, W_i), 'pooled': (D,)}}`` for every readable image."""
    levels = [int(s) for s in stages if s != "pooled"]
    bad = [i for i in levels if not 0 <= i < len(unwrap_model(model).levels)]
    if bad:
        raise ValueError(f"--stages: no level {bad[0]} (the model has {len(unwrap_model(model).levels)})")
    out: dict[str, dict[str, torch.Tensor]] = {}
    from tqdm.auto import tqdm

    for batch in tqdm(loader, desc="extract", leave=False):
        if batch["image"].numel() == 0:
            continue
        x = batch["image"].to(device)
        feats: dict[str, torch.Tensor] = {}
        if levels:
            maps = model.forward_intermediates(x, indices=sorted(set(levels)), intermediates_only=True)
            feats.update({f"stage{i}": m for i, m in zip(sorted(set(levels)), maps)})
        if "pooled" in stages:
            feats["pooled"] = model.forward_head(model.forward_features(x), pre_logits=True)
        for row, i in enumerate(batch["target"].tolist()):
            out[str(paths[i])] = {k: v[row].float().cpu().contiguous() for k, v in feats.items()}
    return out


def _run_extract(args: argparse.Namespace) -> int:
    import numpy as np

    from ..engine import init_distributed
    from ..models.checkpoint import save_state_dict

    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if not stages or any(s != "pooled" and not s.isdigit() for s in stages):
        raise ValueError(f"--stages must list level numbers and/or 'pooled', got {args.stages!r}")
    info = init_distributed(args.device)
    model, meta = load_classifier(args.checkpoint, args.model, False, args.pretrained)
    model.to(info.device)
    paths = collect_images(args.inputs, recursive=True)
    feats = extract_features(
        model, _image_loader(paths, meta, args.img_size, args.batch_size), paths, stages, info.device
    )
    out = Path(args.output)
    if out.suffix == ".safetensors":
        flat = {f"{img}::{k}": v for img, d in feats.items() for k, v in d.items()}
        save_state_dict(flat, out, {"keys": "<image path>::<stage{i}|pooled>"})
        print(f"{len(feats)} images, {len(flat)} tensors -> {out}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for img, d in feats.items():
        stem = Path(img).stem
        for k, v in d.items():
            tmp = out / f".{stem}_{k}.tmp.npy"
            np.save(tmp, v.numpy())
            tmp.replace(out / f"{stem}_{k}.npy")
            n += 1
    print(f"{len(feats)} images, {n} .npy files -> {out}/")
    return 0


COMMANDS = {
    "train": (_train_arguments, _run_train),
    "eval": (_eval_arguments, _run_eval),
    "predict": (_predict_arguments, _run_predict),
    "extract": (_extract_arguments, _run_extract),
}
