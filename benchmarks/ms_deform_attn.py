"""Benchmark multi-scale deformable attention on CPU: the grid_sample reference against the fused C++ kernel.

Shapes are DINO-4scale-T's at 800 x 1333: levels (100, 167), (50, 84), (25, 42), (13, 21) (S = 22 223 tokens),
M = 8 heads of D = 32 channels, P = 4 points per level, batch 1; the encoder has Lq = S queries (its 6 layers each
call the op once), the decoder Lq = 900. Locations are a few pixels (normal, sigma 3) around reference points:
for the encoder, each token's own pixel centre in token order (as DINO's encoder queries are), for the decoder
random points; some fall outside the map. Weights are softmaxed over the 16 (level, point) pairs.

Both implementations run in one process in interleaved rounds (each round times every (case, implementation) once,
the order of the implementations alternating); the table gives median ms and the median of the per-round speedups.
``fwd+bwd`` takes the gradients of value, locations and weights.

Example::

    python benchmarks/ms_deform_attn.py --rounds 7 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import internimage.ops.ms_deform_attn as msda

LEVELS = [(100, 167), (50, 84), (25, 42), (13, 21)]
HEADS, CHANNELS, POINTS = 8, 32, 4


def make_inputs(queries: int | None, dtype: torch.dtype, seed: int = 0):
    """(value, locations, weights, grad_output); ``queries=None``: one per token (the encoder)."""
    gen = torch.Generator().manual_seed(seed)
    tokens = sum(h * w for h, w in LEVELS)
    lq = tokens if queries is None else queries
    value = torch.randn(1, tokens, HEADS, CHANNELS, generator=gen)
    if queries is None:  # pixel centres of every level, in token order
        ref = torch.cat(
            [
                torch.stack(
                    torch.meshgrid((torch.arange(w) + 0.5) / w, (torch.arange(h) + 0.5) / h, indexing="xy"), -1
                ).view(-1, 2)
                for h, w in LEVELS
            ]
        ).view(1, lq, 1, 1, 1, 2)
    else:
        ref = torch.rand(1, lq, 1, 1, 1, 2, generator=gen)
    sizes = torch.tensor([[w, h] for h, w in LEVELS], dtype=torch.float32).view(1, 1, 1, len(LEVELS), 1, 2)
    offsets = torch.randn(1, lq, HEADS, len(LEVELS), POINTS, 2, generator=gen) * 3
    loc = ref + offsets / sizes
    weights = torch.randn(1, lq, HEADS, len(LEVELS) * POINTS, generator=gen).softmax(-1)
    weights = weights.view(1, lq, HEADS, len(LEVELS), POINTS)
    grad = torch.randn(1, lq, HEADS * CHANNELS, generator=gen)
    return tuple(t.to(dtype) for t in (value, loc, weights, grad))


def timed(fn, inputs, backward: bool) -> float:
    value, loc, weights, grad = inputs
    if backward:
        value, loc, weights = (t.detach().requires_grad_() for t in (value, loc, weights))
    start = time.perf_counter()
    if backward:
        out = fn(value, LEVELS, loc, weights)
        torch.autograd.grad(out, (value, loc, weights), grad)
    else:
        with torch.no_grad():
            fn(value, LEVELS, loc, weights)
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    if not msda.fused_available():
        raise SystemExit("the fused CPU kernel cannot be built here")
    impls = {"reference": msda.ms_deform_attn_reference, "fused": msda.ms_deform_attn}
    cases = {}
    for name, queries in (("encoder Lq=22223", None), ("decoder Lq=900", 900)):
        inputs = make_inputs(queries, dtype)
        for pas in ("fwd", "fwd+bwd"):
            cases[(name, pas)] = inputs
    times = {(case, impl): [] for case in cases for impl in impls}
    for key, inputs in cases.items():  # warm-up (builds, allocator)
        for fn in impls.values():
            timed(fn, inputs, key[1] == "fwd+bwd")
    for r in range(args.rounds):
        for key, inputs in cases.items():
            order = list(impls) if r % 2 == 0 else list(reversed(impls))
            for impl in order:
                times[(key, impl)].append(timed(impls[impl], inputs, key[1] == "fwd+bwd"))
    print(
        f"ms_deform_attn, DINO-4scale-T shapes at 800x1333 (M={HEADS}, D={CHANNELS}, P={POINTS}, N=1), {args.dtype}, "
        f"{args.threads} threads, median of {args.rounds} interleaved rounds"
    )
    print(f"{'case':<18} {'pass':<8} {'reference ms':>13} {'fused ms':>9} {'speedup':>8}")
    for key in cases:
        ref, fus = times[(key, "reference")], times[(key, "fused")]
        speedup = statistics.median(a / b for a, b in zip(ref, fus))
        ref_ms, fused_ms = statistics.median(ref), statistics.median(fus)
        print(f"{key[0]:<18} {key[1]:<8} {ref_ms:>13.1f} {fused_ms:>9.1f} {speedup:>7.1f}x")


if __name__ == "__main__":
    main()
