"""Parameter and MAC counts on the meta device (no memory, no weights).

MACs are what the InternImage paper calls FLOPs (the paper's tables). Dense layers are counted by
``torch.utils.flop_counter`` (2 FLOPs per MAC, halved here); the DCNv3/DCNv4 sampling core is counted analytically as
5 MACs per output channel and point: 4 bilinear corners and the mask weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from .factory import create_model
from .internimage import MODEL_SPECS

__all__ = ["Complexity", "model_complexity", "dcnv3_macs"]


@dataclass(frozen=True)
class Complexity:
    """Size and cost of one model at one resolution."""

    name: str
    params: int
    macs: int
    dcn_macs: int
    resolution: int


def dcnv3_macs(num_outputs: int, num_points: int) -> int:
    """MACs of the DCNv3/DCNv4 sampling core: N*Ho*Wo*C outputs x P points x (4 corners + 1 mask weight)."""
    return num_outputs * num_points * 5


def model_complexity(name: str, resolution: int | None = None, **overrides) -> Complexity:
    """Count parameters and MACs of a registered model for one image, on the meta device.

    Args:
        name: Registered model name.
        resolution: Square input size (defaults to the model's pretrained input size).
        **overrides: Architecture overrides passed to :func:`create_model`.
    """
    cfg = MODEL_SPECS[name][1]
    size = resolution or cfg["input_size"][-1]
    with torch.device("meta"):
        model = create_model(name, **overrides).eval()
        x = torch.empty(1, 3, size, size)
    params = sum(p.numel() for p in model.parameters())
    dcn = 0

    def count(module, inputs, output) -> None:
        nonlocal dcn
        dcn += dcnv3_macs(output.numel(), module.kernel_size**2 - module.remove_center)

    from ..ops.dcnv3 import DCNv3
    from ..ops.dcnv4 import DCNv4

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (DCNv3, DCNv4))]
    # The DCN output_proj runs after the core; hooking the core call itself would need the op, so the hook
    # reads the module output shape, which equals the core's (N, H, W, C).
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return Complexity(name, params, counter.get_total_flops() // 2 + dcn, dcn, size)
