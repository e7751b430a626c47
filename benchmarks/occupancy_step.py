"""One training step and one inference of the full-size BEVFormer-Occ (InternImage-S), with peak memory.

The model is the official ``bevformer_intern-s_occ`` (InternImage-S with gradient checkpointing, FPN 256, 4 encoder
layers, 8 points per pillar, TransformerOcc 3D decoder, 18 classes); inputs are random images of the six cameras
with a plausible camera rig (every pillar projects into some camera), a temporal queue of ``--queue`` frames for
training and one frame for inference. On a GPU the official sizes run (``--bev 200 --scale 1.0``: 1600 x 900
images); on CPU pass a reduced BEV and image scale. Each phase runs in its own process so that its peak memory is
its own (CPU: peak RSS above the process's RSS after building the model; CUDA: ``max_memory_allocated``).

Example::

    python benchmarks/occupancy_step.py --device cpu --bev 50 --scale 0.25 --repeat 2
    python benchmarks/occupancy_step.py --device cuda --bev 200 --scale 1.0 --amp bf16
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time

import torch


def _rig(n: int, t: int, h: int, w: int) -> torch.Tensor:
    """(n, t, 6, 4, 4) lidar2img of six cameras 60 degrees apart, 1.5 m up, focal = width / 2 (about 90 deg)."""
    mats = []
    for k in range(6):
        yaw = math.radians(60 * k)
        fwd = torch.tensor([math.cos(yaw), math.sin(yaw), 0.0], dtype=torch.float64)
        right = torch.tensor([math.sin(yaw), -math.cos(yaw), 0.0], dtype=torch.float64)
        down = torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64)
        rot = torch.stack([right, down, fwd])  # rows: camera x, y, z axes in the lidar frame
        ext = torch.eye(4, dtype=torch.float64)
        ext[:3, :3] = rot
        ext[:3, 3] = -rot @ torch.tensor([0.0, 0.0, 1.5], dtype=torch.float64)
        intr = torch.eye(4, dtype=torch.float64)
        intr[0, 0] = intr[1, 1] = w / 2
        intr[0, 2], intr[1, 2] = w / 2, h / 2
        mats.append(intr @ ext)
    return torch.stack(mats).float().expand(n, t, 6, 4, 4).contiguous()


def _inputs(args: argparse.Namespace, t: int, device: torch.device) -> dict[str, torch.Tensor]:
    h, w = round(900 * args.scale), round(1600 * args.scale)
    hp, wp = -(-h // 32) * 32, -(-w // 32) * 32
    g = torch.Generator().manual_seed(0)
    can_bus = torch.zeros(1, t, 18)
    can_bus[0, :, 0] = torch.arange(t) * 2.0  # 2 m forward per frame
    return {
        "img": torch.randn(1, t, 6, 3, hp, wp, generator=g).to(device),
        "lidar2img": _rig(1, t, h, w).to(device),
        "can_bus": can_bus.to(device),
    }


def _phase(args: argparse.Namespace) -> dict[str, float]:
    from internimage.occupancy.models import build_bevformer_occ

    device = torch.device(args.device)
    model = build_bevformer_occ(bev_h=args.bev, bev_w=args.bev).to(device)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp == "bf16")
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.repeat):
        if args.phase == "train":
            model.train()
            x = _inputs(args, args.queue, device)
            labels = torch.randint(0, 18, (1, args.bev, args.bev, 16), device=device)
            mask = torch.ones_like(labels, dtype=torch.bool)
            opt = torch.optim.AdamW(model.parameters(), lr=2e-4)
            start = time.perf_counter()
            with amp:
                loss = sum(model(**x, voxel_semantics=labels, mask_camera=mask).values())
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        else:
            x = _inputs(args, 1, device)
            start = time.perf_counter()
            with amp:
                model.predict(x["img"][:, 0], x["lidar2img"][:, 0], x["can_bus"][:, 0], "scene")
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_rss
    return {"seconds": min(times), "peak_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bev", type=int, default=200, help="BEV cells per side (200 officially)")
    parser.add_argument("--scale", type=float, default=1.0, help="image scale (1.0: 1600 x 900)")
    parser.add_argument("--queue", type=int, default=4, help="training frames (the config's queue_length)")
    parser.add_argument("--amp", choices=("none", "bf16"), default="none")
    parser.add_argument("--repeat", type=int, default=2, help="runs per phase (the fastest is reported)")
    parser.add_argument("--phase", choices=("train", "infer"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(_phase(args)))
        return
    rows = []
    for phase in ("train", "infer"):
        cmd = [sys.executable, __file__, "--phase", phase, *sys.argv[1:]]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        rows.append((phase, json.loads(out)))
    h, w = round(900 * args.scale), round(1600 * args.scale)
    print(f"BEVFormer-Occ InternImage-S, {args.device} ({torch.get_num_threads()} threads), BEV {args.bev}x{args.bev}, "
          f"6 x {w}x{h} images, queue {args.queue}, amp {args.amp}")  # fmt: skip
    print(f"{'phase':<16} {'seconds':>9} {'peak MB':>9}")
    for phase, r in rows:
        name = f"train step (T={args.queue})" if phase == "train" else "inference (T=1)"
        print(f"{name:<16} {r['seconds']:>9.2f} {r['peak_mb']:>9.0f}")


if __name__ == "__main__":
    main()
