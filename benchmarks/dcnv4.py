"""Benchmark DCNv4 against DCNv3: the op on InternImage-T stage shapes, and FlashInternImage-T vs InternImage-T.

Part 1 (op): ``dcnv4(x, offset_mask)`` against ``dcnv3(x, offset, mask)`` holding the same values, on the four
stages of InternImage-T (56x56x64 G4, 28x28x128 G8, 14x14x256 G16, 7x7x512 G32; K=3), forward (no grad) and
forward+backward, for each batch size, on the automatic backend of each device (CPU here; CUDA too when present).
Since DCNv4 runs on the DCNv3 backends, the ratio is the cost of the fused-layout adaptation.

Part 2 (model): inference images/s of ``flash_intern_image_t_1k_224`` against ``internimage_t_1k_224`` at 224x224.

Each comparison runs in one process in interleaved rounds (each round times both once, the order alternating); the
table gives median ms and the median of the per-round ratios (DCNv3 time / DCNv4 time, > 1 means DCNv4 is faster).

Example::

    python benchmarks/dcnv4.py --rounds 7 --batch 1,8 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from internimage import create_model
from internimage.ops import dcnv3, dcnv4, pack_offset_mask, resolve_backend

STAGES = {"s1": (56, 64, 4), "s2": (28, 128, 8), "s3": (14, 256, 16), "s4": (7, 512, 32)}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_call(call: Callable[[], None], repeat: int, device: str) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeat):
        call()
    _sync(device)
    return (time.perf_counter() - start) / repeat


def interleaved(calls: dict[str, Callable[[], None]], rounds: int, device: str, target_s: float = 0.05):
    """Median-ready samples per call: warm-up, then rounds alternating the order; each sample lasts ~target_s."""
    repeat = {}
    for name, call in calls.items():
        call()
        once = time_call(call, 1, device)
        repeat[name] = max(1, min(100, int(target_s / max(once, 1e-6))))
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(time_call(calls[name], repeat[name], device))
    return times


def op_calls(batch: int, size: int, channels: int, group: int, mode: str, device: str, dtype: torch.dtype):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, size, size, channels, generator=gen).to(device, dtype)
    offset = (2 * torch.randn(batch, size, size, group * 18, generator=gen)).to(device, dtype)
    mask = torch.randn(batch, size, size, group, 9, generator=gen).softmax(-1).reshape(batch, size, size, -1)
    mask = mask.to(device, dtype)
    offset_mask = pack_offset_mask(offset, mask, group)
    grad = torch.randn(batch, size, size, channels, generator=gen).to(device, dtype)
    runs = {"DCNv3": (dcnv3, (x, offset, mask)), "DCNv4": (dcnv4, (x, offset_mask))}
    calls = {}
    for name, (fn, tensors) in runs.items():
        if mode == "fwd":

            def call(fn=fn, tensors=tensors) -> None:
                with torch.no_grad():
                    fn(*tensors, 3, 1, 1, 1, group)

        else:
            leaves = [t.detach().requires_grad_() for t in tensors]

            def call(fn=fn, leaves=leaves) -> None:
                fn(*leaves, 3, 1, 1, 1, group).backward(grad)
                for leaf in leaves:
                    leaf.grad = None

        calls[name] = call
    return calls


def bench_ops(args, device: str, dtype: torch.dtype) -> None:
    backend = resolve_backend(None, device, dtype)
    print(f"\nDCNv4 vs DCNv3 op, {device} ({backend} backend), {str(dtype).split('.')[-1]}, K=3")
    header = f"{'shape':<24} {'mode':<8} {'DCNv3 ms':>9} {'DCNv4 ms':>9} {'v3/v4':>7}"
    print(header + "\n" + "-" * len(header))
    for batch in (int(b) for b in args.batch.split(",")):
        for stage in args.stages.split(","):
            size, channels, group = STAGES[stage]
            for mode in args.modes.split(","):
                times = interleaved(op_calls(batch, size, channels, group, mode, device, dtype), args.rounds, device)
                ratio = statistics.median(a / b for a, b in zip(times["DCNv3"], times["DCNv4"]))
                shape = f"N{batch} {stage} {size}x{size}x{channels} G{group}"
                v3, v4 = (1e3 * statistics.median(times[k]) for k in ("DCNv3", "DCNv4"))
                print(f"{shape:<24} {mode:<8} {v3:9.3f} {v4:9.3f} {ratio:6.2f}x", flush=True)


def bench_models(args, device: str, dtype: torch.dtype) -> None:
    names = {"InternImage-T": "internimage_t_1k_224", "FlashInternImage-T": "flash_intern_image_t_1k_224"}
    torch.manual_seed(0)
    models = {label: create_model(name).eval().to(device, dtype) for label, name in names.items()}
    print(f"\nFlashInternImage-T vs InternImage-T inference, {device}, {str(dtype).split('.')[-1]}, 224x224")
    header = f"{'batch':<6} {'InternImage-T img/s':>20} {'FlashInternImage-T img/s':>25} {'flash/base':>11}"
    print(header + "\n" + "-" * len(header))
    for batch in (int(b) for b in args.model_batch.split(",")):
        x = torch.randn(batch, 3, 224, 224, device=device, dtype=dtype)
        calls = {}
        for label, model in models.items():

            def call(model=model, x=x) -> None:
                with torch.inference_mode():
                    model(x)

            calls[label] = call
        times = interleaved(calls, args.model_rounds, device, target_s=0.0)
        ratio = statistics.median(a / b for a, b in zip(times["InternImage-T"], times["FlashInternImage-T"]))
        base, flash = (batch / statistics.median(times[k]) for k in names)
        print(f"{batch:<6} {base:20.2f} {flash:25.2f} {ratio:10.2f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", default="1,8", help="op batch sizes")
    parser.add_argument("--stages", default="s1,s2,s3,s4")
    parser.add_argument("--modes", default="fwd,fwd+bwd")
    parser.add_argument("--model-batch", default="1,8", help="model batch sizes")
    parser.add_argument("--model-rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--devices", default="auto", help="'auto' (cpu, plus cuda if present) or a comma list")
    parser.add_argument("--skip-ops", action="store_true")
    parser.add_argument("--skip-models", action="store_true")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) if args.devices == "auto" else []
    devices = devices or args.devices.split(",")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, rounds {args.rounds}/{args.model_rounds}")
    for device in devices:
        if not args.skip_ops:
            bench_ops(args, device, dtype)
        if not args.skip_models:
            bench_models(args, device, dtype)


if __name__ == "__main__":
    main()
