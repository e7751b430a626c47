"""mmdet 2.x anchors behind torchvision's ``AnchorGenerator`` interface.

:class:`MMDetAnchorGenerator` is called as torchvision's: ``(ImageList, feature maps) -> per image (A_total, 4)``
xyxy anchors of all levels, finest level first, position-major then ratio, and reports
``num_anchors_per_location()``. Unlike torchvision's, each level's stride is fixed (4..64) rather than derived from
the padded image size, and base anchors are mmdet's (unrounded, centred at ``stride * i``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.detection.image_list import ImageList

__all__ = ["MMDetAnchorGenerator"]


class MMDetAnchorGenerator(nn.Module):
    """mmdet's ``AnchorGenerator`` (``center_offset=0``) behind torchvision's ``AnchorGenerator`` interface.

    Level l has a fixed stride s_l whatever the padded image size (torchvision derives it as
    ``image_size // map_size``, 61 instead of 64 on the stride-64 level of most COCO images), base anchors of
    side ``s_l * scale`` with ratios h/w = r (w = s_l * scale / sqrt(r), h = s_l * scale * sqrt(r)), not rounded,
    centred at ``(s_l * j, s_l * i)``. Order: position-major, then ratio (mmdet's and torchvision's).

    Args:
        strides: Stride of each feature level.
        scales: Anchor side in strides (``octave_base_scale``), one entry in the official configs.
        ratios: Height / width ratios.
    """

    def __init__(
        self,
        strides: Sequence[int] = (4, 8, 16, 32, 64),
        scales: Sequence[float] = (8.0,),
        ratios: Sequence[float] = (0.5, 1.0, 2.0),
    ) -> None:
        super().__init__()
        self.strides = list(strides)
        self.scales = list(scales)
        self.ratios = list(ratios)

    def num_anchors_per_location(self) -> list[int]:
        return [len(self.scales) * len(self.ratios)] * len(self.strides)

    def base_anchors(self, stride: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Returns: (A, 4) anchors centred at the origin, ratio-major."""
        ratios = torch.tensor(self.ratios, dtype=dtype, device=device)
        scales = torch.tensor(self.scales, dtype=dtype, device=device)
        h_ratios = torch.sqrt(ratios)
        w_ratios = 1 / h_ratios
        ws = (stride * w_ratios[:, None] * scales[None, :]).reshape(-1)
        hs = (stride * h_ratios[:, None] * scales[None, :]).reshape(-1)
        return torch.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], 1)

    def grid_anchors(self, sizes: Sequence[tuple[int, int]], dtype: torch.dtype, device: torch.device):
        """Args: sizes: (H_l, W_l) per level. Returns: per level (H_l * W_l * A, 4)."""
        if len(sizes) != len(self.strides):
            raise ValueError(f"MMDetAnchorGenerator: {len(sizes)} feature maps for {len(self.strides)} strides")
        out = []
        for (h, w), stride in zip(sizes, self.strides):
            xs = torch.arange(w, device=device).to(dtype) * stride
            ys = torch.arange(h, device=device).to(dtype) * stride
            yy, xx = torch.meshgrid(ys, xs, indexing="ij")
            shifts = torch.stack([xx, yy, xx, yy], -1).reshape(-1, 1, 4)
            out.append((shifts + self.base_anchors(stride, dtype, device)[None]).reshape(-1, 4))
        return out

    def forward(self, image_list: ImageList, feature_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """Returns: per image the (sum_l H_l W_l A, 4) anchors of all levels (the same for every image)."""
        sizes = [tuple(f.shape[-2:]) for f in feature_maps]
        anchors = torch.cat(self.grid_anchors(sizes, feature_maps[0].dtype, feature_maps[0].device))
        return [anchors for _ in range(len(image_list.image_sizes))]
