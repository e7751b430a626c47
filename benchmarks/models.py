"""InternImage-T vs timm ``convnext_tiny``: images/s for inference and a training step, and training peak memory.

Both models run in one process in interleaved rounds (the order rotates every round); the table reports median
times and the median of the per-round ratios, which are far steadier than absolute times on a shared VM.
Training peak memory is measured in a fresh subprocess per model as the growth of peak RSS over the built model,
with glibc told to return every freed block of 64 KiB or more to the OS (``MALLOC_MMAP_THRESHOLD_``) so RSS follows
live tensor memory instead of the allocator's retained heap (which made it swing by +-100 MB from run to run).
InternImage runs with its defaults: oneDNN-fused linear layers in CPU inference (``INTERNIMAGE_FUSED_LINEAR=0``
turns them off) and ``recompute_activations=True`` in training (the table adds a row without it).

The VM's state also differs from process to process (ConvNeXt-T's time alone moves by ~10%), so
``--processes N`` repeats the timing in N fresh processes and reports the median of their ratios with the range.

Page faults can decide the inference ratio: with glibc's defaults, freed activation buffers may go back to the OS
and be faulted in again on the next forward. In an inference-only process ConvNeXt-T took ~96k minor faults per bs-8
forward and InternImage-T ~22k, which put the bs-8 ratio at 0.98 in one such run against 0.85 without faults. In
this script's interleaved rounds the training step leaves the heap warm and both models' inference rounds see ~0
faults (the table's last column says so); ``--tuned-malloc`` re-runs with glibc told to keep freed memory (what
jemalloc/tcmalloc or a long-running server converge to), so every row measures compute alone.

Usage::

    python benchmarks/models.py --rounds 7            # inference bs 1 and 8, training step bs 8, memory
    python benchmarks/models.py --rounds 7 --processes 3 --no-memory   # ratios over 3 fresh processes
    python benchmarks/models.py --rounds 7 --processes 3 --no-memory --tuned-malloc   # no page faults
    INTERNIMAGE_DCN_BACKEND=reference python benchmarks/models.py   # the pure-PyTorch operator instead
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import timm
import torch
from dcnv3_op import TUNED_MALLOC, malloc_mode

import internimage  # noqa: F401  (registers the InternImage models with timm)

MODELS = ("internimage_t_1k_224", "convnext_tiny")


def _build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=1000)


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _infer(model: torch.nn.Module, x: torch.Tensor) -> tuple[float, int]:
    """Seconds and minor page faults of one inference forward."""
    faults, start = _minor_faults(), time.perf_counter()
    with torch.inference_mode():
        model(x)
    return time.perf_counter() - start, _minor_faults() - faults


def _train_step(
    model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
) -> tuple[float, int]:
    """Seconds and minor page faults of one SGD step."""
    faults, start = _minor_faults(), time.perf_counter()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - start, _minor_faults() - faults


def time_models(
    rounds: int, batch_sizes: tuple[int, ...], train_batch: int
) -> dict[str, dict[str, list[tuple[float, int]]]]:
    """Interleaved measurements: ``{mode: {model: [(seconds, minor page faults) per round]}}``."""
    models = {name: _build(name) for name in MODELS}
    opts = {name: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for name, m in models.items()}
    inputs = {bs: torch.randn(bs, 3, 224, 224) for bs in (*batch_sizes, train_batch)}
    target = torch.randint(0, 1000, (train_batch,))
    modes = [f"infer bs{bs}" for bs in batch_sizes] + [f"train bs{train_batch}"]
    times: dict[str, dict[str, list[tuple[float, int]]]] = {mode: {name: [] for name in MODELS} for mode in modes}
    for r in range(rounds + 1):  # round 0 warms up (kernel build, allocator) and is discarded
        order = list(MODELS) if r % 2 == 0 else list(reversed(MODELS))
        for name in order:
            model = models[name]
            model.eval()
            for bs in batch_sizes:
                t = _infer(model, inputs[bs])
                if r:
                    times[f"infer bs{bs}"][name].append(t)
            model.train()
            t = _train_step(model, opts[name], inputs[train_batch], target)
            if r:
                times[f"train bs{train_batch}"][name].append(t)
        print(f"round {r}/{rounds} done", file=sys.stderr)
    return times


def peak_memory_mb(name: str, batch: int, **overrides: object) -> float:
    """Peak-RSS growth (MB) of 3 training steps over the built model, in a fresh process.

    ``ru_maxrss`` survives ``exec`` (a child would inherit this process's high-water mark), so the child resets
    its own mark through ``/proc/self/clear_refs`` and reads ``VmHWM`` from ``/proc/self/status``.
    """
    code = (
        "import torch, timm, internimage\n"
        "def status(key):\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith(key): return int(line.split()[1]) / 1024\n"
        f"torch.set_num_threads(2); torch.manual_seed(0); m = timm.create_model({name!r}, **{overrides!r}).train()\n"
        "opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)\n"
        f"x = torch.randn({batch}, 3, 224, 224); y = torch.randint(0, 1000, ({batch},))\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"
        "base = status('VmRSS')\n"
        "for _ in range(3):\n"
        "    loss = torch.nn.functional.cross_entropy(m(x), y); opt.zero_grad(); loss.backward(); opt.step()\n"
        "print(status('VmHWM') - base)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in TUNED_MALLOC}
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


def summarize(times: dict[str, dict[str, list[tuple[float, int]]]]) -> dict[str, tuple[float, ...]]:
    """``{mode: (median s of a, median s of b, median per-round ratio b/a, median faults of a, of b)}``."""
    a, b = MODELS
    out = {}
    for mode, per_model in times.items():
        ratio = statistics.median(tb / ta for (ta, _), (tb, _) in zip(per_model[a], per_model[b]))
        secs = [statistics.median(t for t, _ in per_model[m]) for m in MODELS]
        faults = [statistics.median(f for _, f in per_model[m]) for m in MODELS]
        out[mode] = (*secs, ratio, *faults)
    return out


def _print_table(rows: dict[str, tuple[float, ...]], ratio_note: dict[str, str] | None = None) -> None:
    a, b = MODELS
    print(f"\n| mode | {a} ms | {b} ms | {a} img/s | {b} img/s | ratio (img/s {a} / {b}) | minor faults a / b |")
    print("|---|---|---|---|---|---|---|")
    for mode, (ta, tb, ratio, fa, fb) in rows.items():
        bs = int(mode.split("bs")[-1])
        note = (ratio_note or {}).get(mode, "")
        cells = f"{ta * 1e3:.1f} | {tb * 1e3:.1f} | {bs / ta:.2f} | {bs / tb:.2f} | {ratio:.2f}{note}"
        print(f"| {mode} | {cells} | {fa / 1e3:.1f}k / {fb / 1e3:.1f}k |")


def _over_processes(args: argparse.Namespace) -> None:
    """Times in ``args.processes`` fresh processes; prints per-process ratios and their median and range."""
    runs = []
    for i in range(args.processes):
        cmd = [sys.executable, __file__, "--rounds", str(args.rounds), "--threads", str(args.threads)]
        cmd += ["--train-batch", str(args.train_batch), "--batch-sizes", *map(str, args.batch_sizes), "--json"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        ratios = ", ".join(f"{mode} {row[2]:.2f}" for mode, row in runs[-1].items())
        print(f"process {i + 1}/{args.processes}: {ratios}", flush=True)
    rows, notes = {}, {}
    for mode in runs[0]:
        per = [run[mode] for run in runs]
        rows[mode] = tuple(statistics.median(row[k] for row in per) for k in range(len(per[0])))
        notes[mode] = f" ({min(row[2] for row in per):.2f}-{max(row[2] for row in per):.2f})"
    print(f"\nmedians over {args.processes} processes (ratio range in brackets):")
    _print_table(rows, notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--processes", type=int, default=1, help="repeat the timing in this many fresh processes")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--tuned-malloc", action="store_true", help="re-run with glibc keeping freed memory")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # one process's rows, for --processes
    args = parser.parse_args()
    if args.rounds < 1 or args.processes < 1:
        parser.error("--rounds and --processes must be at least 1")
    malloc = malloc_mode(args.tuned_malloc)
    torch.set_num_threads(args.threads)
    from internimage.ops.backends import resolve_backend

    if args.json:
        rows = summarize(time_models(args.rounds, tuple(args.batch_sizes), args.train_batch))
        print(json.dumps(rows))
        return
    backend = resolve_backend(None, "cpu", torch.float32)
    print(f"DCN backend: {backend}, threads: {torch.get_num_threads()}, glibc malloc: {malloc}")
    if args.processes > 1:
        _over_processes(args)
    else:
        _print_table(summarize(time_models(args.rounds, tuple(args.batch_sizes), args.train_batch)))
    a, b = MODELS
    if not args.no_memory:
        mem = {name: peak_memory_mb(name, args.train_batch) for name in MODELS}
        stored = peak_memory_mb(a, args.train_batch, recompute_activations=False)
        print(f"\ntraining peak memory over the built model (bs {args.train_batch}, peak RSS growth):")
        print("| model | MB | ratio to convnext_tiny |\n|---|---|---|")
        for label, mb in ((a, mem[a]), (f"{a} (recompute_activations=False)", stored), (b, mem[b])):
            print(f"| {label} | {mb:.0f} | {mb / mem[b]:.2f} |")


if __name__ == "__main__":
    main()
