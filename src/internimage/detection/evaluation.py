"""COCO evaluation: detector outputs -> COCO results, box / mask AP (faster-coco-eval or pycocotools), the eval loop."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..data.datasets import workers_stop_on_error
from .data import coco_mask_api

__all__ = ["coco_evaluate", "evaluate_detector", "predictions_to_coco"]

logger = logging.getLogger(__name__)


def predictions_to_coco(
    predictions: list[dict[str, torch.Tensor]], image_ids: Sequence[int], cat_ids: Sequence[int]
) -> list[dict[str, Any]]:
    """Detector outputs -> COCO result entries (``bbox`` xywh, ``score``, ``category_id``, ``segmentation`` RLE).

    Args:
        predictions: Per image ``boxes`` (D, 4) xyxy, ``scores`` (D,), ``labels`` (D,) in 1..K, optional ``masks``
            (D, 1, H, W) probabilities (kept where ``>= 0.5``, mmdet's ``mask_thr_binary``).
        image_ids: COCO image id of each prediction.
        cat_ids: COCO category id of label 1..K (``dataset.cat_ids``, which follows the model's class names).
    """
    results: list[dict[str, Any]] = []
    mask_api = None
    for pred, image_id in zip(predictions, image_ids):
        boxes = pred["boxes"].detach().float().cpu()
        scores = pred["scores"].detach().float().cpu().tolist()
        labels = pred["labels"].detach().cpu().tolist()
        masks = pred.get("masks")
        if masks is not None:
            mask_api = mask_api or coco_mask_api()
            binary = (masks[:, 0] >= 0.5).cpu().numpy().astype(np.uint8)
        for i, (box, score, label) in enumerate(zip(boxes.tolist(), scores, labels)):
            entry = {
                "image_id": int(image_id),
                "category_id": int(cat_ids[label - 1]),
                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                "score": float(score),
            }
            if masks is not None:
                rle = mask_api.encode(np.asfortranarray(binary[i]))
                counts = rle["counts"]
                rle["counts"] = counts.decode("ascii") if isinstance(counts, bytes) else counts
                entry["segmentation"] = rle
            results.append(entry)
    return results


_STAT_NAMES = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")


def coco_evaluate(
    ann_file: str | os.PathLike | dict[str, Any],
    results: list[dict[str, Any]],
    iou_types: Sequence[str] = ("bbox", "segm"),
    image_ids: Sequence[int] | None = None,
    backend: str = "faster_coco_eval",
) -> dict[str, float]:
    """COCO AP of ``results`` against the ground truth.

    Args:
        ann_file: Ground-truth annotation file (or its loaded dict).
        results: COCO result entries (:func:`predictions_to_coco`).
        iou_types: ``bbox`` and/or ``segm``.
        image_ids: Restrict to these images (default: all images of the annotation file).
        backend: ``'faster_coco_eval'`` (default) or ``'pycocotools'`` (the reference, for cross-checks).

    Returns:
        ``{f'{iou_type}_{name}'}`` for name in mAP, mAP_50, mAP_75, mAP_s, mAP_m, mAP_l (-1 where undefined).
        With no results at all every AP is 0.
    """
    if not results:
        return {f"{t}_{n}": 0.0 for t in iou_types for n in _STAT_NAMES}
    if backend == "faster_coco_eval":
        try:
            from faster_coco_eval import COCO
            from faster_coco_eval import COCOeval_faster as COCOeval
        except ImportError as err:
            raise RuntimeError("COCO evaluation needs faster-coco-eval: pip install 'internimage[detection]'") from err
    elif backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    else:
        raise ValueError(f"backend must be 'faster_coco_eval' or 'pycocotools', got {backend!r}")
    # Both libraries report progress on stdout / INFO; library code logs at DEBUG instead.
    quiet = {"print_function": logger.debug} if backend == "faster_coco_eval" else {}
    metrics: dict[str, float] = {}
    with contextlib.redirect_stdout(io.StringIO()) as captured:
        gt_source = json.loads(json.dumps(ann_file)) if isinstance(ann_file, dict) else str(ann_file)
        if isinstance(gt_source, dict) and backend == "pycocotools":
            gt = COCO()
            gt.dataset = gt_source
            gt.createIndex()
        else:
            gt = COCO(gt_source, **quiet)
        for iou_type in iou_types:
            entries = [r for r in results if iou_type == "bbox" or "segmentation" in r]
            if not entries:
                metrics.update({f"{iou_type}_{n}": 0.0 for n in _STAT_NAMES})
                continue
            dt = gt.loadRes(json.loads(json.dumps(entries)))
            ev = COCOeval(gt, dt, iou_type, **quiet)
            if image_ids is not None:
                ev.params.imgIds = list(image_ids)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            metrics.update({f"{iou_type}_{n}": float(v) for n, v in zip(_STAT_NAMES, ev.stats[:6])})
    logger.debug("%s", captured.getvalue())
    return metrics


def _base_dataset(ds: Any) -> Any:
    while hasattr(ds, "dataset"):
        ds = ds.dataset
    return ds


@torch.no_grad()
def evaluate_detector(
    model: torch.nn.Module, loader: Any, info: Any = None, limit: int | None = None
) -> dict[str, float]:
    """The dataset's metric for ``model`` over ``loader`` (sharded loaders are gathered).

    COCO: box (and mask) AP. The other datasets (:class:`~internimage.detection.datasets.DetectionDataset`) apply
    their own metric (VOC / OpenImages mAP, LVIS federated AP, CrowdHuman AP / MR^-2) through ``dataset.evaluate``.

    Args:
        model: A detector (possibly DDP-wrapped), evaluated in eval mode.
        loader: Loader over a :class:`~internimage.detection.data.CocoDetection` or a
            :class:`~internimage.detection.datasets.DetectionDataset` (or a ``Subset`` of one) with
            :func:`~internimage.detection.data.collate_detection`.
        info: The engine's ``DistInfo`` under distribution (results are gathered to every rank).
        limit: Real samples of this rank to use (default: the loader's real count, else all).

    Returns:
        COCO: ``bbox_mAP``, ``bbox_mAP_50``, ... and ``segm_*`` for mask models; others: the dataset's keys.
    """
    from tqdm import tqdm

    from ..engine.sampler import real_sample_count

    dataset = _base_dataset(loader.dataset)
    real = limit if limit is not None else real_sample_count(loader)
    device = next(model.parameters()).device
    own_metric = hasattr(dataset, "evaluate")
    results: list[Any] = []
    image_ids: list[int] = []
    seen = 0
    main = info is None or info.is_main
    with workers_stop_on_error():
        for batch in tqdm(loader, desc="eval", disable=not main, leave=False):
            images = [img.to(device) for img in batch["images"]]
            targets = batch["targets"]
            preds = model(images, orig_sizes=[tuple(t["orig_size"]) for t in targets])
            keep = len(targets) if real is None else max(0, min(len(targets), real - seen))
            seen += len(targets)
            ids = [int(t["image_id"]) for t in targets[:keep]]
            if own_metric:
                results += [_detections(p, t) for p, t in zip(preds[:keep], targets[:keep])]
            else:
                results += predictions_to_coco(preds[:keep], ids, dataset.cat_ids)
            image_ids += ids
    if info is not None and info.distributed:
        import torch.distributed as dist

        gathered: list[Any] = [None] * info.world_size
        dist.all_gather_object(gathered, (results, image_ids))
        results = [r for part in gathered for r in part[0]]
        image_ids = [i for part in gathered for i in part[1]]
    if own_metric:
        return dataset.evaluate(dict(zip(image_ids, results)))
    iou_types = ("bbox", "segm") if any("segmentation" in r for r in results) or _has_masks(model) else ("bbox",)
    # The validated annotations (degenerate polygons dropped), not the raw file: the ground truth the model saw.
    gt = getattr(dataset, "coco", None) or dataset.ann_file
    return coco_evaluate(gt, results, iou_types, image_ids=sorted(set(image_ids)))


def _detections(pred: dict[str, torch.Tensor], target: dict[str, Any]) -> dict[str, Any]:
    """One image's boxes / scores / labels as numpy (what ``DetectionDataset.evaluate`` takes), with its size."""
    out = {k: pred[k].detach().float().cpu().numpy() for k in ("boxes", "scores")}
    out["labels"] = pred["labels"].detach().cpu().numpy().astype(np.int64)
    out["orig_size"] = tuple(int(v) for v in target["orig_size"])
    return out


def _has_masks(model: torch.nn.Module) -> bool:
    model = getattr(model, "module", model)
    heads = getattr(model, "roi_heads", None)
    return getattr(heads, "mask_predictor", None) is not None or hasattr(heads, "mask_heads")
