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

Then the issue's targets, each marked met / not met / not measured.

Output in ``--output``: ``gpu_check.md`` (the table, also printed), ``gpu_check.json`` (every figure),
``gpu_check.log`` (this script's log with full tracebacks) and ``logs/`` (pytest, train and eval output).
``--budget-s`` bounds the whole run: items that would start after it are skipped and listed as such.

``--dry-run`` runs the same code on the CPU with tiny shapes (batch 1-2, 32-pixel images, bf16 autocast only, stage
maps of 8x8 down to 1x1, 2 timing rounds, Triton in its interpreter via ``TRITON_INTERPRET=1``, torch.compile with
``aot_eager``, pytest without the sm_90 compile checks). Its timings say nothing about a GPU; it exists so that the
one GPU run is not wasted on a bug of this script.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the gpucheck package beside this script

from gpucheck.correctness import check_compile, check_environment, check_ops, finish_pytest, start_pytest  # noqa: E402
from gpucheck.report import Report, free_memory, last_line, logger, make_plan, write_text  # noqa: E402
from gpucheck.smoke import training_smoke  # noqa: E402
from gpucheck.speed import model_speed, op_speed  # noqa: E402


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
    parser.add_argument("--sections", default="0,1,2,3,4", help="comma-separated subset of 0-4 (0 always runs)")
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds (default 5; 2 in a dry run)")
    parser.add_argument("--no-pytest", action="store_true", help="skip 1a (the pytest subprocess)")
    args = parser.parse_args(argv)
    if args.budget_s <= 0:
        parser.error("--budget-s must be positive")
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    wanted = {s.strip() for s in args.sections.split(",") if s.strip()}
    if not wanted <= set("01234"):
        parser.error(f"--sections takes numbers 0-4, got {args.sections!r}")
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
