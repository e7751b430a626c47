"""The detectors' input/output transform: normalise and batch, never resize.

:class:`PassThroughTransform` is called as torchvision's ``GeneralizedRCNNTransform``: ``(images, targets) ->
(ImageList, targets)`` with images normalised (ImageNet mean/std) and padded to a multiple of 32, and
``postprocess(detections, image_sizes, original_sizes)`` maps predictions back to the sizes before the data
pipeline's resize (boxes rescaled, RoI masks pasted as mmdet does). Resizing and flipping are the data pipeline's
job (mmdet order), which is what the 3x multi-scale + crop recipe needs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from .roi_heads import paste_masks

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "PassThroughTransform"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PassThroughTransform(GeneralizedRCNNTransform):
    """Normalise (ImageNet mean/std; uint8 or [0, 1] float input) and pad-batch to a multiple of 32; never resize."""

    def __init__(
        self,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
        size_divisible: int = 32,
    ) -> None:
        super().__init__(
            min_size=800, max_size=1333, image_mean=list(image_mean), image_std=list(image_std),
            size_divisible=size_divisible,
        )  # fmt: skip

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """Args: image: (3, H, W) uint8 in [0, 255] or float in [0, 1]. Returns: the normalised float image."""
        if not image.is_floating_point():
            image = image.float().div_(255.0)
        return super().normalize(image)

    def resize(
        self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        return image, target

    def postprocess(
        self,
        result: list[dict[str, torch.Tensor]],
        image_shapes: list[tuple[int, int]],
        original_image_sizes: list[tuple[int, int]],
    ) -> list[dict[str, torch.Tensor]]:
        """Map detections back to the original sizes as mmdet's ``rescale=True`` does.

        Boxes are divided by the resize factors (``new / original`` per axis); masks (RoI probabilities,
        (D, 1, M, M)) are pasted into the original image with :func:`paste_masks`.
        """
        if self.training:
            return result
        for pred, (h, w), (oh, ow) in zip(result, image_shapes, original_image_sizes):
            boxes = pred["boxes"]
            scale = boxes.new_tensor([w / ow, h / oh, w / ow, h / oh])
            pred["boxes"] = boxes / scale
            if "masks" in pred:
                pred["masks"] = paste_masks(pred["masks"], pred["boxes"], (oh, ow))
        return result
