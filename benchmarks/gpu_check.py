"""One prepared GPU verification run: correctness, operator speed, model speed and a training smoke.

Run on the GPU machine (torch, Triton and timm installed, no network) from the repository root::

    pip install --no-deps -e . && python benchmarks/gpu_check.py --output $OUT

and on a CPU-only machine, to exercise every code path end to end with tiny shapes before GPU time is spent::

    python benchmarks/gpu_check.py --output /tmp/gpu_check --dry-run

Installing the checkout is the caller's job (the command above); section 0 checks that ``internimage`` is imported
from this checkout and that the installed torch satisfies the range ``pyproject.toml`` declares.

Sections (each item is guarded: a failure is recorded in the table with the error's last line and the run goes on):

0. Environment: GPU, CUDA, torch, Triton, timm; torch within the declared range; the backend ``auto`` picks.
1. Correctness.
   a. ``pytest -q tests -k "cuda or triton"`` in a subprocess (started first, it runs while 1b/1c use the GPU).
   b. The four InternImage-T DCNv3 stage shapes (56x56x64 G4, 28x28x128 G8, 14x14x256 G16, 7x7x512 G32, K=3)
      with the module's layout (offset and mask logits are views of one projection, softmax inside the op) and
      FlashInternImage-T's first DCNv4 shape (56x56x64 G4, fused offset_mask of width 112): the Triton forward
      and the input/offset/mask gradients against the float64 reference backend fed the same (rounded) values,
      in fp32, fp16 and bf16. ``abs`` is the largest absolute difference, ``rel`` that over the reference's
      largest magnitude; tolerances are those of ``tests/test_ops_triton.py``.
   c. ``torch.compile`` (``fullgraph=True``, inductor) of one InternImage-T stage-1 block against eager: a training
      forward + backward in fp32 (output, input and parameter gradients) and an eval forward under bf16 autocast.
2. Operator speed at N=64 for the four stages: Triton against the reference backend, forward (no grad) and
   forward + backward, median ms per call over interleaved rounds timed with CUDA events, speedup (median of the
   per-round ratios), and achieved bandwidth against the copy bandwidth measured in the same run (``dst.copy_(src)``
   of a 1 GiB tensor, read + write counted). Bytes are the minimal traffic: forward reads input, offset and mask
   and writes the output; forward + backward adds reading grad_output, input, offset and mask again and writing
   the three gradients.
3. Models: InternImage-T and FlashInternImage-T against timm ``convnext_tiny`` (all with drop_path_rate 0.1, as
   trained), inference images/s at batch 1 and 128 under bf16 and fp16 autocast, one AdamW training step at
   batch 64 under bf16 autocast, and training memory (parameters, gradients and optimizer state plus the peak
   growth of ``torch.cuda.max_memory_allocated`` during one step). Channels-last is used for a model when it
   measured faster at batch 128. Every ratio is the median of per-round ratios from interleaved rounds in this
   one process.
4. Training smoke: ``internimage train`` on a synthetic PNG folder (two colour-coded classes) for 20 steps on CUDA
   with bf16 autocast, then ``internimage eval`` of the written ``model.safetensors``.

5. Multi-scale deformable attention, which has no GPU kernel (``ms_deform_attn`` dispatches CUDA tensors to the
   ``grid_sample`` reference): ``ms_deform_attn_reference`` at DINO-4scale-T's encoder shape (batch 2, levels
   (100, 167), (50, 84), (25, 42), (13, 21) of an 800x1333 image, 8 heads of 32 channels, 4 points, one query per
   level position), forward (no grad) and forward + backward, fp32 and bf16 tensors; median ms over interleaved
   rounds and the peak growth of allocated memory of one call.
6. Detectors: DINO-4scale-T and Mask R-CNN-T (built as their presets ``dino_4scale_internimage_t_1x_coco_layer_wise_lr``
   and ``mask_rcnn_internimage_t_fpn_1x_coco`` build them, random weights) on one 3x800x1333 image under bf16
   autocast: images/s (median of timed calls after warm-up) and ``torch.cuda.max_memory_allocated``.
7. Occupancy: the official-size BEVFormer-Occ InternImage-S (``build_bevformer_occ()``), six cameras of 900x1600
   padded to 928x1600 around the car: one inference (``predict``, temporal, after a first frame of the scene) and
   one training step (``forward_train`` on a queue of 4 frames, backward, AdamW), fp32 and bf16 autocast: seconds
   and peak allocated memory.

Sections 5-7 record a failure as an error row and go on; besides the run's budget each has its own time cap, and an
item that would not fit in what is left is recorded as "skipped: time budget".

Then the issue's targets, each marked met / not met / not measured.

Output in ``--output``: ``gpu_check.md`` (the table, also printed), ``gpu_check.json`` (every figure),
``gpu_check.log`` (this script's log with full tracebacks) and ``logs/`` (pytest, train and eval output).
``--budget-s`` bounds the whole run: items that would start after it are skipped and listed as such.

``--dry-run`` runs the same code on the CPU with tiny shapes (batch 1-2, 32-pixel images, bf16 autocast only, stage
maps of 8x8 down to 1x1, 2 timing rounds, Triton in its interpreter via ``TRITON_INTERPRET=1``, torch.compile with
``aot_eager``, pytest without the sm_90 compile checks; sections 5-7 with deformable-attention levels of 13x21 down
to 2x3, 128x160 detector images on the ``internimage_test_32`` backbone with narrow necks and heads, and the tiny
occupancy model on 60x96 images padded to 64x96). Its timings say nothing about a GPU; it exists so that the one GPU
run is not wasted on a bug of this script.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the gpucheck package beside this script

from gpucheck.correctness import check_compile, check_environment, check_ops, finish_pytest, start_pytest  # noqa: E402
from gpucheck.report import (  # noqa: E402
    Report,
    Timer,
    fmt,
    free_memory,
    interleaved,
    last_line,
    logger,
    make_plan,
    write_text,
)
from gpucheck.smoke import training_smoke  # noqa: E402
from gpucheck.speed import model_speed, op_speed  # noqa: E402

# ----------------------------------------------------------------------------------------------- sections 5-7: plan
# Level shapes of DINO-4scale-T's encoder for an 800x1333 image (strides 8, 16, 32, 64, sizes rounded up).
DINO_T_LEVELS = ((100, 167), (50, 84), (25, 42), (13, 21))
DETECTOR_PRESETS = {
    "DINO-4scale-T": "dino_4scale_internimage_t_1x_coco_layer_wise_lr",
    "Mask R-CNN-T": "mask_rcnn_internimage_t_fpn_1x_coco",
}


@dataclass(frozen=True)
class ExtraPlan:
    """Sizes of sections 5-7 (the Plan of ``gpucheck.report`` covers sections 0-4 and is not extended here)."""

    msda_batch: int
    msda_levels: tuple[tuple[int, int], ...]
    msda_dtypes: tuple[str, ...]
    det_image: tuple[int, int]
    det_backbone: str | None  # None: the preset's InternImage-T
    det_kwargs: dict[str, dict[str, Any]]  # model_kwargs per detector, on top of the preset's
    det_warmup: int
    det_repeats: int
    occ_full: bool  # build_bevformer_occ() (official size) or build_bevformer_occ_tiny()
    occ_image: tuple[int, int, int]  # (height, width, padded height)
    occ_queue: int
    occ_dtypes: tuple[str, ...]
    occ_warmup: int
    occ_repeats: int
    need_s: dict[str, float]  # seconds an item needs before it is started (roughly its H100 time, rounded up)
    cap_s: dict[str, float]  # per-section cap, so one slow section cannot eat the time of the next ones


def make_extra_plan(dry_run: bool) -> ExtraPlan:
    # With random weights Mask R-CNN's class scores are about 1/81, under the 0.05 threshold: no box would reach the
    # mask head. Threshold 0 keeps the 100 detections per image a trained model returns on a busy COCO image.
    mask_rcnn = {"box_score_thresh": 0.0}
    need = {"msda": 10.0, "det": 30.0, "occ build": 20.0, "occ predict": 20.0, "occ train": 45.0}
    caps = {"msda": 45.0, "detectors": 90.0, "occupancy": 200.0}
    if dry_run:
        return ExtraPlan(
            msda_batch=1,
            msda_levels=((13, 21), (7, 11), (4, 6), (2, 3)),
            msda_dtypes=("float32", "bfloat16"),
            det_image=(128, 160),
            det_backbone="internimage_test_32",
            # 128x160 gives 426 encoder tokens, fewer than DINO's 900 queries; CPU bf16 convolutions of 256-wide
            # necks and heads take seconds each: narrow widths keep every code path at a fraction of the cost.
            det_kwargs={
                "DINO-4scale-T": {"num_queries": 100, "neck_channels": 64},
                "Mask R-CNN-T": dict(
                    mask_rcnn,
                    rpn_pre_nms_top_n_test=100,
                    rpn_post_nms_top_n_test=100,
                    box_detections_per_img=10,
                    fpn_channels=32,
                    mask_channels=32,
                    box_fc_dim=64,
                ),
            },
            det_warmup=1,
            det_repeats=1,
            occ_full=False,
            occ_image=(60, 96, 64),
            occ_queue=4,
            occ_dtypes=("float32", "bfloat16"),
            occ_warmup=1,
            occ_repeats=1,
            need_s=need,
            cap_s=caps,
        )
    return ExtraPlan(
        msda_batch=2,
        msda_levels=DINO_T_LEVELS,
        msda_dtypes=("float32", "bfloat16"),
        det_image=(800, 1333),
        det_backbone=None,
        det_kwargs={"DINO-4scale-T": {}, "Mask R-CNN-T": mask_rcnn},
        det_warmup=2,
        det_repeats=5,
        occ_full=True,
        occ_image=(900, 1600, 928),
        occ_queue=4,
        occ_dtypes=("float32", "bfloat16"),
        occ_warmup=1,
        occ_repeats=2,
        need_s=need,
        cap_s=caps,
    )


# Seconds section 3 leaves free (on top of its reserve for section 4) for each selected section of 5-7, so that a run
# already late does not spend them on more timing rounds. Kept to roughly their core items: the reserve only bites
# when section 3 starts late, and then costs section 3 rounds (it always keeps one).
EXTRA_RESERVE_S = {"5": 10.0, "6": 30.0, "7": 60.0}


class SectionClock:
    """Time spent in one section against its cap."""

    def __init__(self, key: str, cap_s: float) -> None:
        self.key = key
        self.cap_s = cap_s
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.cap_s - self.elapsed()


@contextmanager
def budget_item(report: Report, clock: SectionClock, name: str, need_s: float) -> Iterator[bool]:
    """:meth:`Report.item` with the section's cap as well: yields False (row "skipped: time budget ...") when the
    run's budget or the section's cap has less than ``need_s`` left; errors become rows and the run goes on."""
    section = report.sections[clock.key]
    reason = ""
    if report.left() < need_s:
        reason = f"skipped: time budget ({max(report.left(), 0):.0f} s of the run's {report.budget_s:.0f} s left"
    elif clock.left() < need_s:
        reason = f"skipped: time budget (section cap {clock.cap_s:.0f} s, {clock.elapsed():.0f} s used"
    if reason:
        reason += f", needs ~{need_s:.0f} s)"
        report.skipped.append(f"{section.title}: {name}")
        section.rows.append({section.columns[0]: name, "status": reason})
        section.figures.append({"item": name, "skipped": reason})
        logger.warning("%s / %s %s", section.title, name, reason)
        yield False
        return
    with report.item(clock.key, name) as go:  # need_s 0: the budget was checked above
        yield go


@contextmanager
def dry_run_threads(dry_run: bool) -> Iterator[None]:
    """One intra-op thread for the CPU dry run of sections 5-7: their models are thousands of tiny ops, and on a
    shared 2-core machine waking a second thread per op made the tiny detectors ~10x slower than one thread."""
    if not dry_run:
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def reset_peak(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_mb(device: str) -> float | None:
    """``torch.cuda.max_memory_allocated`` in MiB since the last :func:`reset_peak` (None on the CPU)."""
    import torch

    if device != "cuda":
        return None
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def timed_s(fn: Callable[[], Any], device: str) -> float:
    """Seconds of one call, the GPU's queue drained before and after."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


@contextmanager
def cudnn_benchmark(enabled: bool) -> Iterator[None]:
    """Set ``torch.backends.cudnn.benchmark`` (section 3 turns it on) for one section, restored after."""
    import torch

    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def short_dtype(name: str) -> str:
    return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[name]


# ----------------------------------------------------------------------------------------------- section 5
def msda_inputs(batch: int, levels, dtype, device: str, seed: int = 0):
    """(value, locations, weights, grad_output) of an encoder call: one query per level position, each sampling a
    few pixels (normal, sigma 3) around its own pixel centre on every level, as benchmarks/ms_deform_attn.py."""
    import torch

    heads, channels, points = 8, 32, 4
    gen = torch.Generator(device=device).manual_seed(seed)
    tokens = sum(h * w for h, w in levels)
    centres = []
    for h, w in levels:
        ys, xs = torch.meshgrid(
            (torch.arange(h, device=device) + 0.5) / h, (torch.arange(w, device=device) + 0.5) / w, indexing="ij"
        )
        centres.append(torch.stack((xs, ys), -1).view(-1, 2))
    ref = torch.cat(centres).view(1, tokens, 1, 1, 1, 2)
    sizes = torch.tensor([[w, h] for h, w in levels], dtype=torch.float32, device=device)
    offsets = torch.randn(batch, tokens, heads, len(levels), points, 2, generator=gen, device=device) * 3
    loc = ref + offsets / sizes.view(1, 1, 1, len(levels), 1, 2)
    weights = torch.randn(batch, tokens, heads, len(levels) * points, generator=gen, device=device).softmax(-1)
    weights = weights.view(batch, tokens, heads, len(levels), points)
    value = torch.randn(batch, tokens, heads, channels, generator=gen, device=device)
    grad = torch.randn(batch, tokens, heads * channels, generator=gen, device=device)
    return tuple(t.to(dtype) for t in (value, loc, weights, grad))


def msda_speed(report: Report) -> None:
    import torch

    from internimage.ops.ms_deform_attn import _use_fused

    plan, xp = report.plan, make_extra_plan(report.plan.dry_run)
    cols = ["case", "dtype", "mode", "ms", "peak growth MB", "status"]
    section = report.section("msda", "5. Multi-scale deformable attention: grid_sample reference", cols)
    clock = SectionClock("msda", xp.cap_s["msda"])
    levels = [tuple(s) for s in xp.msda_levels]
    tokens = sum(h * w for h, w in levels)
    # What the model calls on these tensors: the fused kernel is CPU only, so CUDA must land on the reference.
    dispatch = "fused CPU kernel" if _use_fused(plan.device, torch.float32) else "reference (grid_sample)"
    section.notes.append(
        f"batch {xp.msda_batch}, levels {levels} ({tokens} tokens = queries), 8 heads x 32, 4 points; "
        f"ms_deform_attn on {plan.device} tensors dispatches to: {dispatch}; median of {plan.rounds} interleaved "
        "rounds; bf16 = all tensors bf16 (no autocast); peak growth = max_memory_allocated over one call"
    )
    timer = Timer(plan.device, plan.target_ms)
    for dtype_name in xp.msda_dtypes:
        with budget_item(report, clock, f"N={xp.msda_batch} Lq=S={tokens} {dtype_name}", xp.need_s["msda"]) as go:
            if go:
                msda_case(report, timer, xp.msda_batch, levels, dtype_name)
        free_memory()


def msda_case(report: Report, timer: Timer, batch: int, levels: list[tuple[int, int]], dtype_name: str) -> None:
    """Forward and forward + backward of one dtype in interleaved rounds, then the peak memory of one call each."""
    import torch

    from internimage.ops.ms_deform_attn import ms_deform_attn_reference

    plan = report.plan
    value, loc, weights, grad = msda_inputs(batch, levels, getattr(torch, dtype_name), plan.device)
    leaves = [t.detach().clone().requires_grad_() for t in (value, loc, weights)]

    def fwd() -> Any:
        with torch.no_grad():
            return ms_deform_attn_reference(value, levels, loc, weights)

    def fwd_bwd() -> Any:
        for t in leaves:
            t.grad = None
        ms_deform_attn_reference(leaves[0], levels, leaves[1], leaves[2]).backward(grad)

    fns = {"fwd": fwd, "fwd+bwd": fwd_bwd}
    samples = interleaved(timer, fns, plan.rounds, report)
    case = f"N={batch} Lq=S={value.shape[1]}"
    section = report.sections["msda"]
    for mode, fn in fns.items():
        for t in leaves:
            t.grad = None
        reset_peak(plan.device)
        base = torch.cuda.memory_allocated() / 2**20 if plan.device == "cuda" else 0.0
        fn()
        peak = peak_mb(plan.device)
        growth = None if peak is None else peak - base
        ms = statistics.median(samples[mode])
        section.rows.append(
            {
                "case": case,
                "dtype": dtype_name,
                "mode": mode,
                "ms": f"{ms:.3f}",
                "peak growth MB": fmt(growth, ".0f"),
                "status": "ok",
            }
        )
        section.figures.append(
            {
                "case": case,
                "levels": levels,
                "batch": batch,
                "dtype": dtype_name,
                "mode": mode,
                "ms": samples[mode],
                "median_ms": ms,
                "peak_growth_mb": growth,
            }
        )


# ----------------------------------------------------------------------------------------------- section 6
def build_detector_model(label: str, xp: ExtraPlan):
    """The detector of a preset as training builds it (``build_detector_from_config``), without pretrained weights."""
    import torch

    from internimage.detection import DetectionConfig
    from internimage.detection.task import build_detector_from_config

    preset = DETECTOR_PRESETS[label]
    fields: dict[str, Any] = {}
    if xp.det_backbone:
        fields["model"] = xp.det_backbone
    kwargs = {**DetectionConfig.preset_fields(preset).get("model_kwargs", {}), **xp.det_kwargs[label]}
    if kwargs:
        fields["model_kwargs"] = kwargs
    cfg = DetectionConfig.from_preset(preset, **fields)
    torch.manual_seed(0)
    return build_detector_from_config(cfg, load_pretrained=False).eval(), cfg


def detector_speed(report: Report) -> None:
    import torch

    plan, xp = report.plan, make_extra_plan(report.plan.dry_run)
    dev = plan.device
    cols = ["model", "image", "ms / image", "images/s", "peak MB", "detections", "status"]
    section = report.section("detectors", "6. Detectors: inference under bf16 autocast, batch 1", cols)
    clock = SectionClock("detectors", xp.cap_s["detectors"])
    h, w = xp.det_image
    section.notes.append(
        f"one {h}x{w} uint8 image per call (padded to a multiple of 32 by the model); random weights; "
        f"{xp.det_warmup} warm-up + median of {xp.det_repeats} timed calls; peak MB = max_memory_allocated over the "
        "timed calls (weights included); Mask R-CNN with box_score_thresh 0, so its mask head gets the full "
        "box_detections_per_img boxes (100 in the preset)"
    )
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, device=dev)
    # Per-shape autotuning would land in the few timed calls (Mask R-CNN's RoI counts vary) and in the peak memory.
    with cudnn_benchmark(False):
        for label in DETECTOR_PRESETS:
            with budget_item(report, clock, label, xp.need_s["det"]) as go:
                if not go:
                    continue
                model, cfg = build_detector_model(label, xp)
                model = model.to(dev)
                params = sum(p.numel() for p in model.parameters()) / 1e6

                def infer(model=model) -> Any:
                    with torch.inference_mode(), torch.autocast(dev, dtype=torch.bfloat16):
                        return model([image])

                for _ in range(xp.det_warmup):
                    out = infer()
                reset_peak(dev)
                seconds = [timed_s(infer, dev) for _ in range(xp.det_repeats)]
                peak = peak_mb(dev)
                out = infer()
                med = statistics.median(seconds)
                boxes = int(out[0]["boxes"].shape[0])
                masks = tuple(out[0]["masks"].shape) if "masks" in out[0] else None
                section.rows.append(
                    {
                        "model": f"{label} ({cfg.model}, {params:.1f}M)",
                        "image": f"{h}x{w}",
                        "ms / image": f"{med * 1e3:.1f}",
                        "images/s": f"{1 / med:.2f}",
                        "peak MB": fmt(peak, ".0f"),
                        "detections": f"{boxes}" + (f", masks {masks}" if masks else ""),
                        "status": "ok" if boxes > 0 else "FAIL",
                    }
                )
                section.figures.append(
                    {
                        "model": label,
                        "preset": DETECTOR_PRESETS[label],
                        "backbone": cfg.model,
                        "model_kwargs": cfg.model_kwargs,
                        "params_m": params,
                        "image": [h, w],
                        "seconds": seconds,
                        "images_per_s": 1 / med,
                        "peak_mb": peak,
                        "detections": boxes,
                    }
                )
                del model, out, infer
            free_memory()


# ----------------------------------------------------------------------------------------------- section 7
def camera_rig(height: int, width: int) -> Any:
    """(6, 4, 4) lidar2img of six pinhole cameras 1.5 m above the lidar origin looking out every 60 degrees, focal
    length 0.79 x width (nuScenes' front camera: 1266 px at 1600), principal point at the centre of the unpadded
    image: a 65-degree horizontal field each, so the ring sees all around the car as nuScenes' does."""
    import torch

    f, cx, cy = 0.79 * width, width / 2, height / 2
    k = torch.tensor([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]], dtype=torch.float64)
    centre = torch.tensor([0.0, 0.0, 1.5], dtype=torch.float64)
    mats = []
    for i in range(6):
        a = math.radians(60.0 * i)
        # Rows: the camera's x (right), y (down), z (forward) axes in the lidar frame (x forward, y left, z up).
        rot = torch.tensor(
            [[math.sin(a), -math.cos(a), 0.0], [0.0, 0.0, -1.0], [math.cos(a), math.sin(a), 0.0]], dtype=torch.float64
        )
        m = torch.eye(4, dtype=torch.float64)
        m[:3, :3] = k @ rot
        m[:3, 3] = k @ (-rot @ centre)
        mats.append(m)
    return torch.stack(mats).float()


def can_bus_queue(frames: int) -> Any:
    """(1, frames, 18) absolute CAN bus: the car drives 0.5 m per frame while turning 0.02 rad per frame (the
    temporal attention then shifts and rotates the previous BEV, as on a real drive)."""
    import torch

    can = torch.zeros(1, frames, 18, dtype=torch.float64)
    yaw = 0.3 + 0.02 * torch.arange(frames, dtype=torch.float64)
    can[0, :, 0] = 600.0 + 0.5 * torch.cumsum(torch.cos(yaw), 0)
    can[0, :, 1] = 1600.0 + 0.5 * torch.cumsum(torch.sin(yaw), 0)
    can[0, :, 3] = torch.cos(yaw / 2)  # quaternion (w, x, y, z) of the yaw
    can[0, :, 6] = torch.sin(yaw / 2)
    can[0, :, -2] = yaw
    can[0, :, -1] = torch.rad2deg(yaw)
    return can.float()


def visible_fraction(model, lidar2img, img_shape: tuple[int, int]) -> float:
    """Share of BEV pillars with at least one anchor inside some camera image: a rig that misses the images would
    leave the spatial cross-attention nothing to attend and time a degenerate model."""
    from internimage.occupancy.models.encoder import bev_reference_points_3d, point_sampling

    head = model.pts_bbox_head
    pc = head.pc_range
    ref = bev_reference_points_3d(head.bev_h, head.bev_w, pc[5] - pc[2], 4, device=lidar2img.device)
    _, mask = point_sampling(ref, pc, lidar2img[:1], img_shape)  # (1, cams, Q, D)
    return float(mask.any(-1).any(1).float().mean())


def occupancy_check(report: Report) -> None:
    import torch

    from internimage.occupancy.models import build_bevformer_occ, build_bevformer_occ_tiny

    plan, xp = report.plan, make_extra_plan(report.plan.dry_run)
    dev = plan.device
    cols = ["step", "dtype", "seconds", "peak MB", "figures", "status"]
    title = "7. Occupancy: BEVFormer-Occ " + ("InternImage-S (official size)" if xp.occ_full else "tiny (dry run)")
    section = report.section("occupancy", title, cols)
    clock = SectionClock("occupancy", xp.cap_s["occupancy"])
    h, w, pad_h = xp.occ_image
    t = xp.occ_queue
    section.notes.append(
        f"6 cameras {h}x{w} padded to {pad_h}x{w}; batch 1; predict: {xp.occ_warmup} first frame of the scene, then "
        f"median of {xp.occ_repeats} frames using the previous BEV; train: forward_train on a {t}-frame queue "
        f"+ backward + AdamW, {xp.occ_warmup} warm-up + median of {xp.occ_repeats}; peak MB = max_memory_allocated "
        "over the timed calls (weights, and for training gradients and AdamW state, included); cudnn.benchmark off"
    )
    state: dict[str, Any] = {}
    with budget_item(report, clock, "build", xp.need_s["occ build"]) as go:
        if go:
            torch.manual_seed(0)
            model = (build_bevformer_occ() if xp.occ_full else build_bevformer_occ_tiny()).to(dev)
            head = model.pts_bbox_head
            img = torch.zeros(1, t, 6, 3, pad_h, w, device=dev)
            img[..., :h, :] = torch.randn(1, t, 6, 3, h, w, device=dev)  # bottom rows: the padding, zeros
            lidar2img = camera_rig(h, w).to(dev).expand(1, t, 6, 4, 4).contiguous()
            grid = (head.bev_h, head.bev_w, head.transformer.pillar_h)
            state.update(
                model=model,
                img=img,
                lidar2img=lidar2img,
                can_bus=can_bus_queue(t).to(dev),
                labels=torch.randint(0, head.num_classes, (1, *grid), device=dev),
                mask=torch.ones(1, *grid, dtype=torch.bool, device=dev),
                ego2lidar=torch.eye(4, device=dev),
            )
            seen = visible_fraction(model, lidar2img[:, -1], (pad_h, w))
            params = sum(p.numel() for p in model.parameters()) / 1e6
            section.rows.append(
                {
                    "step": "build",
                    "figures": f"{params:.1f}M parameters; BEV {grid}; pillars seen by a camera: {100 * seen:.0f}%",
                    "status": "ok" if seen > 0.5 else "FAIL",
                }
            )
            section.figures.append({"step": "build", "params_m": params, "grid": grid, "visible_fraction": seen})
    if not state:
        return
    model = state["model"]
    with cudnn_benchmark(False):  # per-shape autotuning of the 3D decoder convs would be timed and add workspace
        for dtype_name in xp.occ_dtypes:
            with budget_item(report, clock, f"predict {dtype_name}", xp.need_s["occ predict"]) as go:
                if go:
                    occ_predict(report, state, dtype_name, xp)
            free_memory()
        opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=0.01)
        for dtype_name in xp.occ_dtypes:
            with budget_item(report, clock, f"train {dtype_name}", xp.need_s["occ train"]) as go:
                if go:
                    occ_train(report, state, opt, dtype_name, xp)
            free_memory()
    del model, opt
    state.clear()
    free_memory()


def _autocast(dev: str, dtype_name: str):
    import torch

    return torch.autocast(dev, dtype=torch.bfloat16, enabled=dtype_name != "float32")


def occ_predict(report: Report, state: dict[str, Any], dtype_name: str, xp: ExtraPlan) -> None:
    dev = report.plan.device
    model = state["model"]
    model.reset_video_state()
    img, lidar2img, can_bus = state["img"], state["lidar2img"], state["can_bus"]
    frame = [0]

    def predict() -> Any:
        i = min(frame[0], img.shape[1] - 1)  # frames of the queue in order, then the last one again
        frame[0] += 1
        with _autocast(dev, dtype_name):
            return model.predict(img[:, i], lidar2img[:, i], can_bus[:, i], "scene-0", ego2lidar=state["ego2lidar"])

    for _ in range(xp.occ_warmup):
        predict()
    reset_peak(dev)
    seconds = [timed_s(predict, dev) for _ in range(xp.occ_repeats)]
    peak = peak_mb(dev)
    out = predict()["occ"]
    temporal = model.prev_frame_info["prev_bev"] is not None
    med = statistics.median(seconds)
    section = report.sections["occupancy"]
    section.rows.append(
        {
            "step": "predict (1 frame, previous BEV)",
            "dtype": short_dtype(dtype_name),
            "seconds": f"{med:.3f}",
            "peak MB": fmt(peak, ".0f"),
            "figures": f"occ {tuple(out.shape)} {str(out.dtype).replace('torch.', '')}",
            "status": "ok" if temporal and out.dim() == 4 else "FAIL",
        }
    )
    section.figures.append({"step": "predict", "dtype": dtype_name, "seconds": seconds, "peak_mb": peak})


def occ_train(report: Report, state: dict[str, Any], opt, dtype_name: str, xp: ExtraPlan) -> None:
    import torch

    dev = report.plan.device
    model = state["model"].train()
    t = state["img"].shape[1]
    losses: list[float] = []

    def step() -> None:
        with _autocast(dev, dtype_name):
            loss = model.forward_train(
                state["img"],
                state["lidar2img"],
                state["can_bus"],
                prev_exists=torch.ones(1, t, dtype=torch.bool, device=dev),
                voxel_semantics=state["labels"],
                mask_camera=state["mask"],
                ego2lidar=state["ego2lidar"],
            )["loss_occ"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))

    try:
        for _ in range(xp.occ_warmup):
            step()
        reset_peak(dev)
        seconds = [timed_s(step, dev) for _ in range(xp.occ_repeats)]
        peak = peak_mb(dev)
    finally:
        model.eval()
        opt.zero_grad(set_to_none=True)  # the gradients are not needed by the next item: free them
    med = statistics.median(seconds)
    finite = all(math.isfinite(v) for v in losses)
    section = report.sections["occupancy"]
    section.rows.append(
        {
            "step": f"train step ({t}-frame queue)",
            "dtype": short_dtype(dtype_name),
            "seconds": f"{med:.3f}",
            "peak MB": fmt(peak, ".0f"),
            "figures": "loss " + ", ".join(f"{v:.3f}" for v in losses),
            "status": "ok" if finite else "FAIL",
        }
    )
    section.figures.append(
        {"step": "train", "dtype": dtype_name, "seconds": seconds, "peak_mb": peak, "losses": losses}
    )


# ----------------------------------------------------------------------------------------------- main
def guarded(report: Report, key: str, fn: Callable[[Report], None]) -> None:
    """Run one section; an error outside its items is recorded (table and log) and the next section runs."""
    try:
        fn(report)
    except Exception as err:
        logger.error("section %s failed:\n%s", key, traceback.format_exc())
        report.errors.append(f"section {key}: {last_line(err)}")
        free_memory()


@contextmanager
def log_to(path: Path) -> Iterator[None]:
    """INFO logging of this script and the package to stderr and ``path``, removed again on exit."""
    root = logging.getLogger()
    level = root.level
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers = [logging.StreamHandler(sys.stderr), logging.FileHandler(path, mode="w")]
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.setLevel(level)
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", "--out", required=True, type=Path, help="folder for the table, JSON and logs")
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU (Triton interpreted)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="skip items that would start after this")
    parser.add_argument("--sections", default="0,1,2,3,4,5,6,7", help="comma-separated subset of 0-7 (0 always runs)")
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds (default 5; 2 in a dry run)")
    parser.add_argument("--no-pytest", action="store_true", help="skip 1a (the pytest subprocess)")
    args = parser.parse_args(argv)
    if args.budget_s <= 0:
        parser.error("--budget-s must be positive")
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    wanted = {s.strip() for s in args.sections.split(",") if s.strip()}
    if not wanted <= set("01234567"):
        parser.error(f"--sections takes numbers 0-7, got {args.sections!r}")
    args.sections = wanted | {"0"}
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before Triton is imported: the backend accepts CPU tensors
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: run on a GPU machine, or pass --dry-run", file=sys.stderr)
        return 2
    out: Path = args.output
    (out / "logs").mkdir(parents=True, exist_ok=True)
    plan = make_plan(args.dry_run, args.rounds)
    if not args.dry_run:  # section 3 stops its rounds early enough to leave the selected sections 5-7 their start
        extra = sum(EXTRA_RESERVE_S[k] for k in args.sections & set(EXTRA_RESERVE_S))
        plan = dataclasses.replace(plan, reserve_s=plan.reserve_s + extra)
    command = ["python", "benchmarks/gpu_check.py", *(argv if argv is not None else sys.argv[1:])]
    report = Report(out, args.budget_s, plan, command)
    proc = None
    with log_to(out / "gpu_check.log"):
        try:
            guarded(report, "0", check_environment)
            if "1" in args.sections:
                if not args.no_pytest:
                    cols = ["run", "summary", "seconds", "status"]
                    report.section("pytest", "1a. pytest (CUDA and Triton tests)", cols)
                    with report.item("pytest", "start"):
                        proc = start_pytest(report)
                guarded(report, "1b", check_ops)
                guarded(report, "1c", check_compile)
                if proc is not None:
                    guarded(report, "1a", lambda r: finish_pytest(r, proc))
            for key, fn in (("2", op_speed), ("3", model_speed), ("4", training_smoke)):
                if key in args.sections:
                    guarded(report, key, fn)
            # After section 4: these are the heavy ones the budget and their caps cut first when time runs short.
            for key, fn in (("5", msda_speed), ("6", detector_speed), ("7", occupancy_check)):
                if key in args.sections:
                    with dry_run_threads(args.dry_run):
                        guarded(report, key, fn)
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
            text = report.markdown()
            write_text(out / "gpu_check.md", text)
            write_text(out / "gpu_check.json", json.dumps(report.to_json(), indent=1, default=str))
            print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
