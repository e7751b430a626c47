"""Benchmark the DCNv3 operator: the reference against every other available backend on CPU.

Shapes are the four stages of InternImage-T (K=3, pad 1, stride 1): 56x56x64 G4, 28x28x128 G8, 14x14x256 G16
and 7x7x512 G32. Each comparison runs in one process in interleaved rounds (each round times every backend
once, the order rotating from round to round); the table gives median ms and the median of the per-round
speedups against the reference.

Columns:
    * ``peak MB``: the peak of bytes held by torch's CPU allocator during one call, above what was held before it
      (outputs and gradients included, inputs excluded), from the profiler's memory events.
    * ``floor ms``: the memory-bandwidth floor, the minimum bytes a fused kernel must move (read input, offset,
      mask, write output; for fwd+bwd also read them again with grad_output and write the three gradients)
      divided by ``--bandwidth`` (30 GB/s, the measured copy bandwidth of BASELINES.md section 5).

``--layout module`` benchmarks what the DCNv3 module passes instead: offset and mask are the two halves of one
(N, H, W, 27G) projection output (pixel-strided views) and the mask holds logits, normalised by the op's fused
softmax (``softmax=True``; the reference applies ``torch.softmax`` first).

Example::

    python benchmarks/dcnv3_op.py --rounds 7 --batch 1,8 --dtype float32 --tuned-malloc
    python benchmarks/dcnv3_op.py --layout module --batch 8 --stages s1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import torch

from internimage.ops import available_backends, dcnv3

STAGES = {
    "s1": (56, 64, 4),
    "s2": (28, 128, 8),
    "s3": (14, 256, 16),
    "s4": (7, 512, 32),
}
# glibc serves blocks over 32 MB with fresh mmaps, so every large call pays page faults (BASELINES.md).
TUNED_MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}


def malloc_mode(tuned: bool) -> str:
    """With ``tuned``, re-executes this script under :data:`TUNED_MALLOC` (glibc reads it only at start-up) unless
    already there. Returns the mode this process runs in: ``"tuned"`` or ``"default"``."""
    active = all(os.environ.get(k) == v for k, v in TUNED_MALLOC.items())
    if tuned and not active:
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **TUNED_MALLOC})
    return "tuned" if active else "default"


def make_inputs(
    batch: int, size: int, channels: int, group: int, dtype: torch.dtype, seed: int = 0, layout: str = "separate"
):
    """Random NHWC inputs of one stage: offsets of a few pixels, masks softmaxed over the 9 points.

    With ``layout='module'``: offset and mask (logits) are views of one (N, H, W, 27G) tensor.
    """
    gen = torch.Generator().manual_seed(seed)
    points = 9
    if layout == "module":
        x = torch.randn(batch, size, size, channels, generator=gen).to(dtype)
        packed = torch.randn(batch, size, size, 3 * group * points, generator=gen)
        packed[..., : 2 * group * points] *= 2
        offset, logits = packed.to(dtype).split((2 * group * points, group * points), -1)
        grad = torch.randn(batch, size, size, channels, generator=gen).to(dtype)
        return x, offset, logits, grad
    x = torch.randn(batch, size, size, channels, generator=gen).to(dtype)
    offset = (2 * torch.randn(batch, size, size, group * points * 2, generator=gen)).to(dtype)
    mask = torch.randn(batch, size, size, group, points, generator=gen).softmax(-1).reshape(batch, size, size, -1)
    grad = torch.randn(batch, size, size, channels, generator=gen).to(dtype)
    return x, offset, mask.to(dtype), grad


def make_call(backend: str, mode: str, x, offset, mask, grad, group: int, softmax: bool = False) -> Callable[[], None]:
    """A closure running one forward (no grad) or one forward + backward through the public op."""
    if mode == "fwd":

        def call() -> None:
            with torch.no_grad():
                dcnv3(x, offset, mask, 3, 1, 1, 1, group, backend=backend, softmax=softmax)

        return call
    # Leaves keep the views' strides (detach of a view is a view), so the module layout is benchmarked as is.
    leaves = [t.detach().requires_grad_() for t in (x, offset, mask)]

    def call_bwd() -> None:
        out = dcnv3(*leaves, 3, 1, 1, 1, group, backend=backend, softmax=softmax)
        out.backward(grad)
        for leaf in leaves:
            leaf.grad = None

    return call_bwd


def min_bytes(batch: int, size: int, channels: int, group: int, mode: str, itemsize: int) -> int:
    """Bytes a fused kernel must at least read and write."""
    pixels = batch * size * size
    forward = pixels * (2 * channels + 27 * group)  # x in, out; offset 18G and mask 9G per pixel
    backward = pixels * (2 * channels + 2 * 27 * group + channels)  # x, offset, mask, grad_out in; 3 grads out
    return itemsize * (forward + (backward if mode == "fwd+bwd" else 0))


@contextlib.contextmanager
def _quiet_stderr():
    # The profiler's C++ side logs to fd 2 directly; keep the table readable.
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def peak_bytes(call: Callable[[], None]) -> int:
    """Peak bytes allocated by torch's CPU allocator during one call, relative to its start."""
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), tempfile.TemporaryDirectory() as tmp:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            call()
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    memory = sorted((e["ts"], e["args"]["Bytes"]) for e in events if e.get("name") == "[memory]")
    held = peak = 0
    for _, nbytes in memory:
        held += nbytes
        peak = max(peak, held)
    return peak


def time_call(call: Callable[[], None], repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        call()
    return (time.perf_counter() - start) / repeat


def bench_case(backends: list[str], calls: dict[str, Callable[[], None]], rounds: int) -> dict[str, list[float]]:
    """Interleaved rounds, rotating order; each sample averages enough calls to last about 20 ms."""
    repeat = {}
    for name in backends:
        calls[name]()  # warm-up (and first-use build)
        once = time_call(calls[name], 1)
        repeat[name] = max(1, min(50, int(0.02 / max(once, 1e-6))))
    times: dict[str, list[float]] = {name: [] for name in backends}
    for r in range(rounds):
        order = backends[r % len(backends) :] + backends[: r % len(backends)]
        for name in order:
            times[name].append(time_call(calls[name], repeat[name]))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float64", "float16"])
    parser.add_argument("--stages", default="s1,s2,s3,s4")
    parser.add_argument("--modes", default="fwd,fwd+bwd")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bandwidth", type=float, default=30e9, help="bytes/s for the floor column")
    parser.add_argument("--no-memory", action="store_true", help="skip the profiler memory column")
    parser.add_argument("--layout", default="separate", choices=["separate", "module"])
    parser.add_argument("--tuned-malloc", action="store_true", help="re-run with glibc mmap/trim thresholds raised")
    args = parser.parse_args()

    malloc = malloc_mode(args.tuned_malloc)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    backends = ["reference"] + [b for b in available_backends("cpu", dtype) if b != "reference"]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}, {args.rounds} rounds, "
        f"glibc malloc {malloc}, layout {args.layout}; backends: {', '.join(backends)}"
    )
    header = (
        f"{'shape':<22} {'mode':<8} {'backend':<10} {'median ms':>10} {'speedup':>8} {'peak MB':>8} {'floor ms':>9}"
    )
    print(header)
    print("-" * len(header))
    for batch in (int(b) for b in args.batch.split(",")):
        for stage in args.stages.split(","):
            size, channels, group = STAGES[stage]
            x, offset, mask, grad = make_inputs(batch, size, channels, group, dtype, layout=args.layout)
            softmax = args.layout == "module"
            for mode in args.modes.split(","):
                calls = {name: make_call(name, mode, x, offset, mask, grad, group, softmax) for name in backends}
                times = bench_case(backends, calls, args.rounds)
                floor_ms = 1e3 * min_bytes(batch, size, channels, group, mode, x.element_size()) / args.bandwidth
                shape = f"N{batch} {stage} {size}x{size}x{channels} G{group}"
                for name in backends:
                    ratios = [ref / t for ref, t in zip(times["reference"], times[name])]
                    peak = "" if args.no_memory else f"{peak_bytes(calls[name]) / 2**20:8.1f}"
                    print(
                        f"{shape:<22} {mode:<8} {name:<10} {1e3 * statistics.median(times[name]):10.3f} "
                        f"{statistics.median(ratios):7.1f}x {peak:>8} {floor_ms:9.3f}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
