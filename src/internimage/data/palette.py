"""Class colours shared by every drawing (segmentation overlays, detection boxes)."""

from __future__ import annotations

import random

__all__ = ["default_palette"]


def default_palette(num_classes: int, seed: int = 0) -> list[tuple[int, int, int]]:
    """A fixed, well-spread RGB colour per class (golden-ratio hues, alternating brightness)."""
    import colorsys

    rng = random.Random(seed)
    offset = rng.random()
    colours = []
    for i in range(num_classes):
        h = (offset + i * 0.618033988749895) % 1.0
        s, v = (0.65, 0.95) if i % 2 == 0 else (0.9, 0.7)
        r, g, b = colorsys.hsv_to_rgb(h, s, v)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return colours
