"""Benchmark the Triton DCNv3 backend against the pure-PyTorch reference on a CUDA GPU.

Shapes are the four stages of InternImage-T (K=3, pad 1, stride 1): 56x56x64 G4, 28x28x128 G8, 14x14x256 G16 and
7x7x512 G32, at batch 1, 8 and 64, in fp32, fp16 and bf16, for the forward alone (no grad) and forward + backward,
both through the public op ``internimage.ops.dcnv3(..., backend=...)``.

Timing: CUDA events around ``--inner`` back-to-back calls, in ``--rounds`` interleaved rounds (each round times
the reference and Triton once, alternating which goes first); the table gives the median ms per call and the
reference/Triton ratio of the medians. ``peak MB`` is ``torch.cuda.max_memory_allocated`` during one call above
what was allocated before it (outputs and gradients included, inputs excluded). ``floor ms`` is the minimum
traffic of a fused kernel (read input, offset and mask once, write the output; for fwd+bwd also read them and
grad_output again and write the three gradients) over ``--bandwidth``. ``max err`` is the largest difference of
the Triton output (and, for fwd+bwd, of each gradient) from the reference's, relative to the reference's largest
magnitude.

Example::

    python benchmarks/dcnv3_triton.py --batch 1,8,64 --dtype float32,float16,bfloat16 --rounds 15
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable

import torch

from internimage.ops import dcnv3

STAGES = {
    "s1": (56, 64, 4),
    "s2": (28, 128, 8),
    "s3": (14, 256, 16),
    "s4": (7, 512, 32),
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
POINTS = 9
BACKENDS = ("reference", "triton")


def make_inputs(batch: int, size: int, channels: int, group: int, dtype: torch.dtype, seed: int = 0):
    """Random NHWC CUDA inputs of one stage: offsets of a few pixels, masks softmaxed over the 9 points.

    Returns:
        ``(x, offset, mask, grad)``: (N, S, S, C), (N, S, S, G*9*2), (N, S, S, G*9), (N, S, S, C) in ``dtype``.
    """
    gen = torch.Generator(device="cuda").manual_seed(seed)
    shape = (batch, size, size)
    x = torch.randn(*shape, channels, generator=gen, device="cuda").to(dtype)
    offset = (2 * torch.randn(*shape, group * POINTS * 2, generator=gen, device="cuda")).to(dtype)
    mask = torch.randn(*shape, group, POINTS, generator=gen, device="cuda").softmax(-1).reshape(*shape, -1)
    grad = torch.randn(*shape, channels, generator=gen, device="cuda").to(dtype)
    return x, offset, mask.to(dtype), grad


def make_call(backend: str, mode: str, x, offset, mask, grad, group: int) -> Callable[[], list[torch.Tensor]]:
    """A closure running one forward (no grad) or one forward + backward through the public op.

    Returns:
        The closure; it returns ``[output]`` or ``[output, grad_input, grad_offset, grad_mask]``.
    """
    if mode == "fwd":

        def call() -> list[torch.Tensor]:
            with torch.no_grad():
                return [dcnv3(x, offset, mask, 3, 1, 1, 1, group, 1.0, backend=backend)]

        return call
    leaves = [t.detach().clone().requires_grad_() for t in (x, offset, mask)]

    def call_bwd() -> list[torch.Tensor]:
        for leaf in leaves:
            leaf.grad = None
        out = dcnv3(*leaves, 3, 1, 1, 1, group, 1.0, backend=backend)
        out.backward(grad)
        return [out.detach(), *(leaf.grad for leaf in leaves)]

    call_bwd.leaves = leaves  # so peak_mb can free the previous call's gradients first
    return call_bwd


def time_interleaved(calls: dict[str, Callable[[], list[torch.Tensor]]], rounds: int, inner: int) -> dict[str, float]:
    """Median ms per call of each closure, timed with CUDA events in alternating order."""
    names = list(calls)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                calls[name]()
            end.record()
            end.synchronize()
            samples[name].append(start.elapsed_time(end) / inner)
    return {name: statistics.median(values) for name, values in samples.items()}


def peak_mb(call: Callable[[], list[torch.Tensor]]) -> float:
    """Peak CUDA memory of one call above what was allocated before it, in MB."""
    for leaf in getattr(call, "leaves", ()):
        leaf.grad = None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    result = call()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del result
    return peak / 2**20


def floor_ms(mode: str, x, offset, mask, bandwidth_gbs: float) -> float:
    """Memory-traffic lower bound of a fused kernel, in ms."""
    tensors = (x, offset, mask)
    once = sum(t.numel() * t.element_size() for t in tensors) + x.numel() * x.element_size()  # + output
    traffic = once if mode == "fwd" else 3 * once  # backward: read all + grad_output, write three gradients
    return traffic / (bandwidth_gbs * 1e9) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", default="1,8,64", help="comma-separated batch sizes")
    parser.add_argument("--dtype", default="float32,float16,bfloat16", help=f"comma-separated, from {list(DTYPES)}")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, from {list(STAGES)}")
    parser.add_argument("--modes", default="fwd,fwd+bwd")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    parser.add_argument("--inner", type=int, default=5, help="calls per timed event pair")
    parser.add_argument("--bandwidth", type=float, default=3000.0, help="GB/s for the floor column (H100 SXM ~3350)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    opts = parser.parse_args(argv)

    if not torch.cuda.is_available():
        print("dcnv3_triton.py: no CUDA GPU is available (torch.cuda.is_available() is False); nothing to benchmark.")
        return 2
    from internimage.ops import triton_dcnv3

    if not triton_dcnv3.available():
        print("dcnv3_triton.py: the Triton backend is not available here (is triton installed?); nothing to run.")
        return 2

    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    header = (
        f"{'stage':<5} {'N':>3} {'dtype':<8} {'mode':<7} {'ref ms':>9} {'triton ms':>9} {'ratio':>6} "
        f"{'floor ms':>8} {'ref MB':>8} {'triton MB':>9} {'max err':>8}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    for stage in opts.stages.split(","):
        size, channels, group = STAGES[stage]
        for batch in (int(b) for b in opts.batch.split(",")):
            for dtype_name in opts.dtype.split(","):
                dtype = DTYPES[dtype_name]
                x, offset, mask, grad = make_inputs(batch, size, channels, group, dtype)
                for mode in opts.modes.split(","):
                    calls = {name: make_call(name, mode, x, offset, mask, grad, group) for name in BACKENDS}
                    outputs = {name: call() for name, call in calls.items()}  # warm-up: compiles the kernels
                    err = max(
                        ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()
                        for got, want in zip(outputs["triton"], outputs["reference"])
                    )
                    times = time_interleaved(calls, opts.rounds, opts.inner)
                    peaks = {name: peak_mb(call) for name, call in calls.items()}
                    row = {
                        "stage": stage,
                        "batch": batch,
                        "dtype": dtype_name,
                        "mode": mode,
                        "reference_ms": times["reference"],
                        "triton_ms": times["triton"],
                        "ratio": times["reference"] / times["triton"],
                        "floor_ms": floor_ms(mode, x, offset, mask, opts.bandwidth),
                        "reference_peak_mb": peaks["reference"],
                        "triton_peak_mb": peaks["triton"],
                        "max_rel_err": err,
                    }
                    rows.append(row)
                    print(
                        f"{stage:<5} {batch:>3} {dtype_name:<8} {mode:<7} {row['reference_ms']:>9.3f} "
                        f"{row['triton_ms']:>9.3f} {row['ratio']:>6.2f} {row['floor_ms']:>8.3f} "
                        f"{row['reference_peak_mb']:>8.1f} {row['triton_peak_mb']:>9.1f} {err:>8.1e}",
                        flush=True,
                    )
                    del calls, outputs
                del x, offset, mask, grad
                torch.cuda.empty_cache()
    if opts.json:
        with open(opts.json, "w") as handle:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
