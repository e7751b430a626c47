"""DINO-4scale InternImage-T vs Mask R-CNN InternImage-T: CPU inference images/s at 800 x 1333, in one process.

Both detectors are built at full size (COCO, 80 classes, untrained weights: the work done does not depend on the
weights, except that Mask R-CNN's box/mask heads see 1000 proposals and up to 100 detections whatever the scores).
The models run in interleaved rounds (the order rotates every round) on one 3 x 800 x 1333 uint8 image (padded to
800 x 1344); the table reports the median time per image and the ratio of the medians.

``--profile`` adds where DINO's time goes (median of the rounds): the backbone, the multi-scale deformable
attention modules (projections included) and their sampling core (``ops.ms_deform_attn``, what a fused kernel
would replace), the rest (neck, encoder/decoder FFNs, heads, query selection).

Usage::

    python benchmarks/detectors.py --rounds 3 --threads 2 [--profile]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import internimage.ops.ms_deform_attn as msda
from internimage.detection.models import build_detector
from internimage.detection.models.dino import build_dino


def _models() -> dict[str, torch.nn.Module]:
    overrides = dict(layer_scale=1.0)  # as the official detection configs of T
    return {
        "DINO-4scale-T": build_dino("internimage_t_1k_224", 80, backbone_overrides=overrides).eval(),
        "Mask R-CNN-T": build_detector("mask_rcnn", "internimage_t_1k_224", 80, backbone_overrides=overrides).eval(),
    }


class _Timer:
    """Accumulates the wall time of wrapped calls (outermost call only, so nesting is not counted twice)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.depth = 0

    def wrap(self, fn):  # noqa: ANN001, ANN202
        def timed(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            self.depth += 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.depth -= 1
                if self.depth == 0:
                    self.seconds += time.perf_counter() - start

        return timed


def _profile(model: torch.nn.Module, image: torch.Tensor, rounds: int) -> None:
    """Share of DINO's inference time in the backbone, the deformable attention modules and their sampling core."""
    parts = {"backbone": _Timer(), "deformable attention modules": _Timer(), "sampling core (ms_deform_attn)": _Timer()}
    backbone = model.backbone
    for method in ("forward", "forward_intermediates"):  # DINO calls the feature API
        setattr(backbone, method, parts["backbone"].wrap(getattr(backbone, method)))
    attn = [m for m in model.modules() if isinstance(m, msda.MultiScaleDeformableAttention)]
    for m in attn:
        m.forward = parts["deformable attention modules"].wrap(m.forward)
    core = msda.ms_deform_attn
    msda.ms_deform_attn = parts["sampling core (ms_deform_attn)"].wrap(core)
    shares: dict[str, list[float]] = {name: [] for name in [*parts, "total"]}
    try:
        with torch.inference_mode():
            for _ in range(rounds):
                for t in parts.values():
                    t.seconds = 0.0
                start = time.perf_counter()
                model([image])
                shares["total"].append(time.perf_counter() - start)
                for name, t in parts.items():
                    shares[name].append(t.seconds)
    finally:
        msda.ms_deform_attn = core
        del backbone.forward, backbone.forward_intermediates
        for m in attn:
            del m.forward
    total = statistics.median(shares["total"])
    print(f"\nDINO-4scale-T inference, where the time goes ({len(attn)} deformable attention modules):\n")
    print("| part | s / image | share |")
    print("|---|---|---|")
    for name in [*parts, "total"]:
        med = statistics.median(shares[name])
        print(f"| {name} | {med:.3f} | {100 * med / total:.1f}% |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    parser.add_argument("--profile", action="store_true", help="also break DINO's time down by part")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = _models()
    image = torch.randint(0, 256, (3, args.height, args.width), dtype=torch.uint8)
    times: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    with torch.inference_mode():
        for model in models.values():  # warm-up (allocator, oneDNN primitives)
            model([image])
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                start = time.perf_counter()
                models[name]([image])
                times[name].append(time.perf_counter() - start)
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    print(f"\nCPU inference, 1 image {args.height}x{args.width}, {args.threads} threads, median of {args.rounds}\n")
    print("| detector | params (M) | s / image | images / s |")
    print("|---|---|---|---|")
    medians = {}
    for name, model in models.items():
        med = statistics.median(times[name])
        medians[name] = med
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"| {name} | {params:.1f} | {med:.2f} | {1 / med:.3f} |")
    a, b = names
    print(f"\nimages/s {a} / {b}: {medians[b] / medians[a]:.2f}")
    if args.profile:
        _profile(models[a], image, args.rounds)


if __name__ == "__main__":
    main()
