"""Classifier inference: load any classifier checkpoint, predict top-k, extract and save features.

::

    model, info = load_classifier("runs/t/model.safetensors")
    results = predict(model, image_loader(paths, info), paths, info["classes"], topk=5)
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..engine.distributed import unwrap_model
from .config import META_KEY
from .task import class_names

__all__ = ["ImagePaths", "extract_features", "image_loader", "load_classifier", "predict", "save_features"]

logger = logging.getLogger(__name__)


def _checkpoint_metadata(path: Path) -> dict[str, Any]:
    """The model fields our runs store (decoded): safetensors header, or ``metadata``/``config`` of a training
    checkpoint. Files written before the one JSON format (flat string keys) are read too."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        from ..models.checkpoint import CheckpointError

        try:
            with safe_open(str(path), "pt") as f:
                meta = dict(f.metadata() or {})
        except Exception as err:  # SafetensorError, OSError: a damaged or truncated file
            raise CheckpointError(f"cannot read checkpoint {path}: {str(err).strip() or type(err).__name__}") from err
    else:
        from ..models.checkpoint import read_checkpoint

        ckpt = read_checkpoint(path)
        meta = dict(ckpt.get("metadata") or {}) if isinstance(ckpt.get("metadata"), dict) else {}
        if META_KEY not in meta and "model" not in meta and isinstance(ckpt.get("config"), str):
            cfg = json.loads(ckpt["config"])
            if "model" in cfg:
                keys = ("model", "model_kwargs", "img_size")
                return {k: cfg[k] for k in keys if k in cfg}
    if META_KEY in meta:
        return json.loads(meta[META_KEY])
    # The earlier flat layout: plain strings, lists as JSON.
    fields: dict[str, Any] = {k: meta[k] for k in ("model", "image_mode") if k in meta}
    for key in ("model_kwargs", "classes", "mean", "std", "img_size"):
        if key in meta:
            fields[key] = json.loads(meta[key])
    return fields


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
        ``(model in eval mode, info)`` with ``info`` keys ``classes``, ``classes_stored`` (the names come from the
        checkpoint, not a default), ``img_size``, ``mean``, ``std``, ``image_mode``.
    """
    from ..models import create_model

    meta: dict[str, Any] = {}
    path = Path(checkpoint) if checkpoint else None
    if path is not None:
        if path.is_dir():
            raise IsADirectoryError(f"checkpoint {path} is a directory, not a weights file")
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        meta = _checkpoint_metadata(path)
    name = model or meta.get("model")
    if name is None and path is None:
        raise ValueError("no model: pass --model NAME (see `internimage info`)")
    if name is None:
        raise ValueError(f"{path} does not name its architecture: pass --model (see `internimage info`)")
    kwargs = dict(meta.get("model_kwargs", {})) if not model or model == meta.get("model") else {}
    if path is not None:
        head = _head_size(path, use_ema)
        if head is not None:
            kwargs["num_classes"] = head
    net = create_model(name, pretrained=pretrained, **kwargs)
    if path is not None:  # after creation: create_model would treat num_classes as "new head, skip it"
        from ..models import load_weights

        load_weights(net, path, strict=True, use_ema=use_ema)
    net.eval()
    from ..models.internimage import MODEL_SPECS

    default_size = MODEL_SPECS[name][1]["input_size"][-1]
    classes = list(meta["classes"]) if "classes" in meta else class_names(net.num_classes)
    info = {
        "classes": classes,
        "classes_stored": "classes" in meta,
        "img_size": int(meta.get("img_size", default_size)),
        "mean": tuple(meta.get("mean", (0.485, 0.456, 0.406))),
        "std": tuple(meta.get("std", (0.229, 0.224, 0.225))),
        "image_mode": meta.get("image_mode", "RGB"),
    }
    return net, info


class ImagePaths(Dataset):
    """Images named by path, eval-transformed; items ``(image (C, H, W), index)``, None when unreadable."""

    def __init__(self, paths: list[Path], transform: Callable[[Any], torch.Tensor], mode: str) -> None:
        self.paths, self.transform, self.mode = paths, transform, mode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | None:
        from ..data.datasets import load_image

        try:
            return self.transform(load_image(str(self.paths[i]), self.mode)), i
        except Exception as err:  # unreadable image: reported, not fatal
            logger.warning("skipping unreadable image %s: %s", self.paths[i], err)
            return None


def image_loader(
    paths: list[Path], info: dict[str, Any], img_size: int | None = None, batch_size: int = 16
) -> DataLoader:
    """Batches ``{'image': (B, C, S, S), 'target': (B,) indices into paths}`` with the model's eval transform.

    Args:
        paths: Image files.
        info: The second result of :func:`load_classifier` (size, mean, std, image mode).
        img_size: Square input size (default: ``info['img_size']``).
        batch_size: Images per batch.
    """
    from ..data import SkipCollate, build_eval_transform

    if img_size is not None and img_size <= 0:
        raise ValueError(f"image size must be > 0, got {img_size}")
    size = img_size or info["img_size"]
    tf = build_eval_transform(size, mean=info["mean"], std=info["std"])
    return DataLoader(ImagePaths(paths, tf, info["image_mode"]), batch_size=batch_size, collate_fn=SkipCollate())


@torch.no_grad()
def predict(
    model: nn.Module, loader: DataLoader, paths: list[Path], classes: list[str], topk: int, device: torch.device
) -> list[dict[str, Any]]:
    """Top-k ``[{'image', 'top': [{'label', 'index', 'score'}, ...]}]`` for every readable image."""
    from tqdm.auto import tqdm

    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")

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


def save_features(
    feats: dict[str, dict[str, torch.Tensor]], output: str | Path, stems: dict[str, Path] | None = None
) -> int:
    """Write :func:`extract_features`' result: one ``.safetensors`` file, or ``<stem>_<key>.npy`` files in a folder.

    Args:
        feats: ``{image path: {key: tensor}}``.
        output: A ``.safetensors`` file or a folder.
        stems: Relative output name (no suffix) per image path, e.g. ``a/x`` to keep images of different folders
            apart (default: the file's stem).

    Returns:
        The number of tensors written.
    """
    import numpy as np

    from ..io import atomic_write
    from ..models.checkpoint import save_state_dict

    out = Path(output)
    if out.suffix == ".safetensors":
        flat = {f"{img}::{k}": v for img, d in feats.items() for k, v in d.items()}
        save_state_dict(flat, out, {"keys": "<image path>::<stage{i}|pooled>"})
        return len(flat)
    n = 0
    for img, d in feats.items():
        stem = stems[img] if stems is not None else Path(Path(img).stem)
        for k, v in d.items():
            buf = io.BytesIO()  # np.save to a path would append ".npy" to the temporary name
            np.save(buf, v.numpy())
            atomic_write(out / stem.with_name(f"{stem.name}_{k}.npy"), buf.getvalue())
            n += 1
    return n
