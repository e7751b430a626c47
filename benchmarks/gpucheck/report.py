"""The GPU check's bookkeeping: its plan, report, sections, timing helpers and shared constants."""

from __future__ import annotations

import gc
import logging
import math
import statistics
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]  # benchmarks/gpucheck/report.py -> the checkout


logger = logging.getLogger("gpu_check")


# (H=W, C, G) of the four InternImage-T stages; FlashInternImage-T has the same widths and groups.
STAGES = {"stage1": (56, 64, 4), "stage2": (28, 128, 8), "stage3": (14, 256, 16), "stage4": (7, 512, 32)}


KERNEL = 3


POINTS = KERNEL * KERNEL


# Relative tolerances of tests/test_ops_triton.py (max error over the reference's max magnitude).
TOLERANCE = {"float32": 1e-4, "float16": 5e-3, "bfloat16": 3e-2}


# The interpreter variants of the Triton tests are CPU checks (minutes of CPU, run wherever the suite runs); on the
# GPU what is new is their "cuda" variants and the sm_90 compile checks.
PYTEST_K = "(cuda or triton) and not interpret"


# The dry run also leaves out the sm_90 compile checks (each compiles kernels for minutes on a small CPU).
PYTEST_K_DRY = PYTEST_K + " and not sm90"


# ----------------------------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class Plan:
    """Sizes of one run: the GPU run, or the tiny CPU dry run of the same code."""

    dry_run: bool
    device: str
    check_batch: int  # correctness shapes
    spatial_div: int  # stage maps are 56/div ... 7/div (at least 1)
    speed_batch: int
    speed_dtypes: tuple[str, ...]
    rounds: int
    target_ms: float  # each timed sample runs enough calls to last about this long
    copy_mib: int
    block_batch: int
    img_size: int
    infer_batches: tuple[int, ...]
    train_batch: int
    amp_dtypes: tuple[str, ...]
    smoke_batch: int
    smoke_img_size: int
    smoke_workers: int
    reserve_s: float  # kept free for section 4 while section 3 times its rounds
    pytest_k: str
    pytest_cap_s: float  # pytest is killed after this long (it runs in the background during 1b/1c)
    compile_backend: str  # inductor on the GPU; aot_eager in the dry run (same tracing, no C++ codegen minutes)

    def stage_size(self, size: int) -> int:
        return max(1, size // self.spatial_div)


def make_plan(dry_run: bool, rounds: int | None) -> Plan:
    if dry_run:
        return Plan(
            dry_run=True,
            device="cpu",
            check_batch=1,
            spatial_div=7,
            speed_batch=2,
            speed_dtypes=("float32",),
            rounds=rounds or 2,
            target_ms=0.0,
            copy_mib=32,
            block_batch=1,
            img_size=32,
            infer_batches=(1, 2),
            train_batch=2,
            amp_dtypes=("bfloat16",),  # CPU autocast is slow: one dtype exercises the same code
            smoke_batch=4,
            smoke_img_size=32,
            smoke_workers=0,
            reserve_s=0.0,
            pytest_k=PYTEST_K_DRY,
            pytest_cap_s=150.0,
            compile_backend="aot_eager",
        )
    return Plan(
        dry_run=False,
        device="cuda",
        check_batch=2,
        spatial_div=1,
        speed_batch=64,
        speed_dtypes=("float32", "bfloat16"),
        rounds=rounds or 5,
        target_ms=60.0,
        copy_mib=1024,
        block_batch=8,
        img_size=224,
        infer_batches=(1, 128),
        train_batch=64,
        amp_dtypes=("bfloat16", "float16"),
        smoke_batch=16,
        smoke_img_size=224,
        smoke_workers=4,
        reserve_s=100.0,
        pytest_k=PYTEST_K,
        pytest_cap_s=240.0,
        compile_backend="inductor",
    )


# ----------------------------------------------------------------------------------------------- report
@dataclass
class Section:
    """One table of the report: its columns and rows (cells are pre-formatted strings; figures go to the JSON)."""

    title: str
    columns: list[str]
    rows: list[dict[str, str]] = field(default_factory=list)
    figures: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Report:
    """Sections, targets, skipped items and the run's clock (``--budget-s``)."""

    def __init__(self, out: Path, budget_s: float, plan: Plan, argv: list[str]) -> None:
        self.out = out
        self.budget_s = budget_s
        self.plan = plan
        self.argv = argv
        self.start = time.monotonic()
        self.sections: dict[str, Section] = {}
        self.env: dict[str, Any] = {}
        self.targets: list[dict[str, Any]] = []
        self.skipped: list[str] = []
        self.errors: list[str] = []  # sections that failed outside their guarded items

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def section(self, key: str, title: str, columns: list[str]) -> Section:
        return self.sections.setdefault(key, Section(title, columns))

    @contextmanager
    def item(self, key: str, name: str, need_s: float = 0.0) -> Iterator[bool]:
        """Guard one item: yields False (and records the skip) when the budget is spent; records any exception as
        an ``error`` row of section ``key`` with the exception's last line; the run goes on either way."""
        section = self.sections[key]
        if self.left() < need_s:
            reason = f"skipped: budget ({self.budget_s:.0f} s) spent after {self.elapsed():.0f} s"
            self.skipped.append(f"{section.title}: {name}")
            section.rows.append(_status_row(section, name, reason))
            logger.warning("%s / %s %s", section.title, name, reason)
            yield False
            return
        logger.info("%s / %s (t=%.0f s)", section.title, name, self.elapsed())
        try:
            yield True
        except Exception as err:
            logger.error("%s / %s failed:\n%s", section.title, name, traceback.format_exc())
            section.rows.append(_status_row(section, name, f"error: {last_line(err)}"))
            section.figures.append({"item": name, "error": traceback.format_exc()})
            free_memory()

    def target(self, name: str, value: float | None, threshold: str, met: bool | None, detail: str = "") -> None:
        self.targets.append({"target": name, "value": value, "threshold": threshold, "met": met, "detail": detail})

    def markdown(self) -> str:
        env = self.env
        lines = [
            f"# gpu_check ({'DRY RUN on CPU: timings are not GPU figures' if self.plan.dry_run else 'GPU run'})",
            "",
            f"- device: {env.get('device_name', '?')}; torch {env.get('torch', '?')}, Triton {env.get('triton', '?')}, "
            f"timm {env.get('timm', '?')}, CUDA {env.get('cuda', '?')}, Python {env.get('python', '?')}",
            f"- command: `{' '.join(self.argv)}`",
            f"- wall time: {self.elapsed():.0f} s (budget {self.budget_s:.0f} s)",
        ]
        for section in self.sections.values():
            lines += ["", f"## {section.title}", ""]
            lines += [f"- {note}" for note in section.notes]
            if section.notes:
                lines.append("")
            lines.append("| " + " | ".join(section.columns) + " |")
            lines.append("|" + "---|" * len(section.columns))
            for row in section.rows:
                lines.append("| " + " | ".join(row.get(c, "") for c in section.columns) + " |")
        lines += ["", "## Targets of the issue", "", "| target | measured | wanted | result |", "|---|---|---|---|"]
        for t in self.targets:
            result = "not measured" if t["met"] is None else "met" if t["met"] else "NOT MET"
            value = "-" if t["value"] is None else f"{t['value']:.2f}"
            lines.append(f"| {t['target']} | {value}{t['detail']} | {t['threshold']} | {result} |")
        if self.errors:
            lines += ["", "Sections that stopped on an error: " + "; ".join(self.errors)]
        if self.skipped:
            lines += ["", "Skipped for the time budget: " + "; ".join(self.skipped)]
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.plan.dry_run,
            "argv": self.argv,
            "wall_s": self.elapsed(),
            "budget_s": self.budget_s,
            "env": self.env,
            "sections": {k: {"title": s.title, "rows": s.rows, "figures": s.figures} for k, s in self.sections.items()},
            "targets": self.targets,
            "skipped": self.skipped,
            "errors": self.errors,
        }


def _status_row(section: Section, name: str, status: str) -> dict[str, str]:
    return {section.columns[0]: name, "status": status}


def last_line(err: BaseException) -> str:
    """The last non-empty line of an exception's message (what the table shows), with its type."""
    text = [line for line in str(err).strip().splitlines() if line.strip()]
    line = text[-1].strip() if text else ""
    return f"{type(err).__name__}: {line}"[:200].replace("|", "/")


def write_text(path: Path, text: str) -> None:
    """Through the package's atomic writer when it imports (section 0 may find it missing)."""
    try:
        from internimage.io import atomic_write
    except Exception:
        path.write_text(text)
        return
    atomic_write(path, text)


def free_memory() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def fmt(value: float, spec: str = ".3g") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def err_pair(abs_err: float, rel_err: float) -> str:
    return f"{abs_err:.1e} / {rel_err:.1e}"


# ----------------------------------------------------------------------------------------------- timing
class Timer:
    """Milliseconds per call: CUDA events around back-to-back calls on a GPU, ``perf_counter`` on the CPU."""

    def __init__(self, device: str, target_ms: float) -> None:
        self.cuda = device == "cuda"
        self.target_ms = target_ms

    def sync(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()

    def ms(self, fn: Callable[[], Any], iters: int) -> float:
        import torch

        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / iters
        begin = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - begin) * 1e3 / iters

    def calibrate(self, fn: Callable[[], Any], warmup: int = 2, max_iters: int = 50) -> int:
        """Warm ``fn`` up and return how many calls fill ``target_ms`` (at least 1)."""
        for _ in range(warmup):
            fn()
        self.sync()
        once = self.ms(fn, 1)
        return int(min(max_iters, max(1, math.ceil(self.target_ms / max(once, 1e-3)))))


def interleaved(
    timer: Timer, fns: dict[str, Callable[[], Any]], rounds: int, report: Report, reserve_s: float = 0.0
) -> dict[str, list[float]]:
    """ms per call of each function, one sample per round, the order alternating every round.

    Stops early (at least one round done) when the budget minus ``reserve_s`` is spent.
    """
    iters = {name: timer.calibrate(fn) for name, fn in fns.items()}
    samples: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        if r and report.left() < reserve_s:
            logger.warning("stopping after %d of %d rounds: time budget", r, rounds)
            break
        order = names[r % len(names) :] + names[: r % len(names)]
        if r % 2:
            order.reverse()
        for name in order:
            samples[name].append(timer.ms(fns[name], iters[name]))
    return samples


def median_ratio(num: list[float], den: list[float]) -> float:
    """Median over rounds of num[r] / den[r] (the steadier figure on a shared machine)."""
    return statistics.median(a / b for a, b in zip(num, den))
