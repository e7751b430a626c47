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
import copy
import gc
import json
import logging
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
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
            _free_memory()

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


def _free_memory() -> None:
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


# ----------------------------------------------------------------------------------------------- section 0
def check_environment(report: Report) -> None:
    import torch

    plan = report.plan
    section = report.section("env", "0. Environment", ["check", "value", "status"])
    env = report.env
    env.update(torch=torch.__version__, python=platform.python_version(), cuda=torch.version.cuda or "none")
    for name in ("triton", "timm"):
        try:
            env[name] = __import__(name).__version__
        except Exception as err:
            env[name] = f"missing ({last_line(err)})"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(
            device_name=props.name,
            capability=f"{props.major}.{props.minor}",
            memory_gib=round(props.total_memory / 2**30, 1),
        )
    else:
        env["device_name"] = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    section.rows.append({"check": "device", "value": env["device_name"], "status": "ok"})
    for name in ("torch", "triton", "timm", "cuda"):
        section.rows.append({"check": name, "value": str(env[name]), "status": "ok"})

    with report.item("env", "torch in the declared range"):
        spec = declared_torch_spec()
        ok = version_satisfies(torch.__version__, spec)
        env["torch_spec"] = spec
        section.rows.append(
            {"check": "torch in the declared range", "value": f"{torch.__version__} vs '{spec}'", "status": pf(ok)}
        )
    with report.item("env", "internimage from this checkout"):
        import internimage

        where = Path(internimage.__file__).resolve()
        ok = (REPO / "src").resolve() in where.parents
        env["internimage_file"] = str(where)
        section.rows.append({"check": "internimage from this checkout", "value": str(where), "status": pf(ok)})
    with report.item("env", "DCN backend chosen"):
        from internimage.ops import resolve_backend

        if plan.dry_run:
            picked = resolve_backend("triton", "cpu", torch.float32)
            label = "triton forced on CPU tensors (TRITON_INTERPRET=1)"
        else:
            picked = resolve_backend(None, "cuda", torch.bfloat16)
            label = "auto for CUDA bf16"
        env["dcn_backend"] = picked
        section.rows.append({"check": label, "value": picked, "status": pf(picked == "triton")})


def declared_torch_spec() -> str:
    """The version specifier of ``torch`` in pyproject's ``[project] dependencies`` ('' when unconstrained)."""
    import tomllib

    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    for dep in data["project"]["dependencies"]:
        match = re.match(r"^\s*torch\s*(\[[^\]]*\])?\s*([<>=!~].*)?$", dep.split(";")[0])
        if match:
            return (match.group(2) or "").strip()
    raise ValueError("pyproject.toml declares no torch dependency")


def version_satisfies(version: str, spec: str) -> bool:
    """Whether ``version`` (local part such as ``+cu130`` ignored) is inside ``spec``."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    return Version(version.split("+")[0]) in SpecifierSet(spec)


def pf(ok: bool) -> str:
    return "ok" if ok else "FAIL"


# ----------------------------------------------------------------------------------------------- section 1
def pytest_args(plan: Plan) -> list[str]:
    return ["-q", "tests", "-k", plan.pytest_k, "-p", "no:cacheprovider", "--continue-on-collection-errors"]


def start_pytest(report: Report) -> subprocess.Popen:
    log = report.out / "logs" / "pytest.log"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the tests set it per test
    cmd = [sys.executable, "-m", "pytest", *pytest_args(report.plan)]
    logger.info("starting %s", " ".join(cmd))
    handle = open(log, "w")  # noqa: SIM115  (closed by finish_pytest)
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, env=env, text=True)
    proc.log_handle = handle  # type: ignore[attr-defined]
    proc.started = time.monotonic()  # type: ignore[attr-defined]
    return proc


def finish_pytest(report: Report, proc: subprocess.Popen) -> None:
    section = report.sections["pytest"]
    with report.item("pytest", "pytest"):
        cap = report.plan.pytest_cap_s - (time.monotonic() - proc.started)
        try:
            proc.wait(timeout=max(min(report.left(), cap), 5.0))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.log_handle.close()
        seconds = time.monotonic() - proc.started
        text = (report.out / "logs" / "pytest.log").read_text(errors="replace")
        killed = proc.returncode is not None and proc.returncode < 0
        summary = f"killed after {seconds:.0f} s; so far {progress_counts(text)}" if killed else pytest_summary(text)
        failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", text, flags=re.M)
        section.rows.append(
            {
                "run": "pytest -k " + repr(report.plan.pytest_k),
                "summary": summary.replace("|", "/"),
                "seconds": f"{seconds:.0f}",
                "status": pf(proc.returncode == 0) + (f" (rc {proc.returncode})" if proc.returncode else ""),
            }
        )
        for name in failed[:20]:
            section.rows.append({"run": "failed", "summary": name, "status": "FAIL"})
        section.figures.append(
            {"returncode": proc.returncode, "summary": summary, "failed": failed, "seconds": seconds, "killed": killed}
        )


def progress_counts(text: str) -> str:
    """Tally of pytest -q's progress characters ('.' passed, 's' skipped, 'F' failed, 'E' error)."""
    chars = "".join(re.findall(r"^([.sFExX]+)(?:\s+\[\s*\d+%\])?\s*$", text, flags=re.M))
    names = {".": "passed", "s": "skipped", "F": "failed", "E": "error", "x": "xfailed", "X": "xpassed"}
    counts = [f"{chars.count(c)} {name}" for c, name in names.items() if chars.count(c)]
    return ", ".join(counts) or "no test finished"


def pytest_summary(text: str) -> str:
    """pytest's final summary line ('3 passed, 1 skipped in 2.0s'), or the last line of output."""
    lines = [line.strip("= ").strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.search(r"\b(passed|failed|error|errors|skipped|deselected|no tests ran)\b.* in [\d.]+s", line):
            return line
    return lines[-1] if lines else "(no output)"


def _rand(gen, *shape: int):
    import torch

    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def dcnv3_case(n: int, size: int, channels: int, group: int, seed: int = 0):
    """float64 CPU values in the module's layout: input, one projection holding offsets then mask logits, grad."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    x = _rand(gen, n, size, size, channels)
    offset = 2.0 * _rand(gen, n, size, size, group * POINTS * 2)  # a few pixels, many samples fractional/outside
    logits = _rand(gen, n, size, size, group * POINTS)
    grad = _rand(gen, n, size, size, channels)
    return x, torch.cat((offset, logits), -1), grad


def run_dcnv3(x, proj, grad, group: int, backend: str, dtype, device: str):
    """Forward + backward through the public op: (output, grad_input, grad_offset, grad_mask) in ``dtype``."""
    from internimage.ops import dcnv3

    x = x.to(device=device, dtype=dtype).requires_grad_()
    proj = proj.to(device=device, dtype=dtype).requires_grad_()
    offset, mask = proj.split((group * POINTS * 2, group * POINTS), -1)  # pixel-strided views, as in the module
    out = dcnv3(x, offset, mask, KERNEL, 1, 1, 1, group, 1.0, backend=backend, softmax=True)
    out.backward(grad.to(device=device, dtype=dtype))
    g_offset, g_mask = proj.grad.split((group * POINTS * 2, group * POINTS), -1)
    return out.detach(), x.grad, g_offset, g_mask


def run_dcnv4(x, om, grad, group: int, backend: str, dtype, device: str):
    """Forward + backward of dcnv4 on the fused tensor: (output, grad_input, grad_offset, grad_mask, grad_pad)."""
    from internimage.ops import dcnv4, split_offset_mask

    x = x.to(device=device, dtype=dtype).requires_grad_()
    om = om.to(device=device, dtype=dtype).requires_grad_()
    out = dcnv4(x, om, KERNEL, 1, 1, 1, group, 1.0, backend=backend)
    out.backward(grad.to(device=device, dtype=dtype))
    g_offset, g_mask = split_offset_mask(om.grad, group, POINTS)
    return out.detach(), x.grad, g_offset, g_mask, om.grad[..., 3 * group * POINTS :]


def errors(got, ref) -> tuple[float, float]:
    """(max |got - ref|, that over max |ref|), ``ref`` float64."""
    diff = (got.double() - ref).abs().max().item()
    return diff, diff / max(ref.abs().max().item(), 1e-30)


def check_op(report: Report, op: str, name: str, size: int, channels: int, group: int, dtype_name: str) -> None:
    """One row of 1b: the Triton backend in ``dtype_name`` against the float64 reference on the same values."""
    import torch

    from internimage.ops import pack_offset_mask, resolve_backend

    plan = report.plan
    dtype = getattr(torch, dtype_name)
    if resolve_backend("triton", plan.device, dtype) != "triton":
        raise RuntimeError(f"the triton backend cannot run {plan.device} {dtype_name} tensors here")
    n = plan.check_batch
    x, proj, grad = dcnv3_case(n, size, channels, group)
    pad_err = 0.0
    if op == "dcnv3":
        # The reference sees exactly the rounded values the backend sees, computed in float64.
        rounded = [t.to(dtype).double() for t in (x, proj, grad)]
        ref = run_dcnv3(*rounded, group, "reference", torch.float64, plan.device)
        got = run_dcnv3(x, proj, grad, group, "triton", dtype, plan.device)
    else:
        offset, logits = proj.split((group * POINTS * 2, group * POINTS), -1)
        mask = logits.unflatten(-1, (group, POINTS)).softmax(-1).flatten(-2)  # DCNv4 takes weights, no softmax
        om = pack_offset_mask(offset, mask, group)  # width ceil(3GP/8)*8, zero padding
        rounded = [t.to(dtype).double() for t in (x, om, grad)]
        ref = run_dcnv4(*rounded, group, "reference", torch.float64, plan.device)[:4]
        *got, pad_grad = run_dcnv4(x, om, grad, group, "triton", dtype, plan.device)
        pad_err = pad_grad.abs().max().item() if pad_grad.numel() else 0.0
    errs = [errors(g, r) for g, r in zip(got, ref)]
    tol = TOLERANCE[dtype_name]
    ok = all(rel <= tol for _, rel in errs) and pad_err == 0.0 and all(g.dtype == dtype for g in got)
    names = ("output", "grad_input", "grad_offset", "grad_mask")
    section = report.sections["ops"]
    section.rows.append(
        {
            "shape": name,
            "dtype": dtype_name,
            **{col: err_pair(*e) for col, e in zip(names, errs)},
            "rel tol": f"{tol:.0e}",
            "status": pf(ok) + ("" if pad_err == 0.0 else f" (pad-column grad {pad_err:.1e})"),
        }
    )
    section.figures.append(
        {
            "op": op,
            "shape": [n, size, size, channels, group],
            "dtype": dtype_name,
            **{f"{k}_abs": e[0] for k, e in zip(names, errs)},
            **{f"{k}_rel": e[1] for k, e in zip(names, errs)},
            "pad_grad_abs": pad_err,
            "tolerance": tol,
            "ok": ok,
        }
    )


def check_ops(report: Report) -> None:
    plan = report.plan
    cols = ["shape", "dtype", "output", "grad_input", "grad_offset", "grad_mask", "rel tol", "status"]
    section = report.section("ops", "1b. Triton DCNv3/DCNv4 vs the float64 reference (abs / rel error)", cols)
    section.notes.append(
        f"N={plan.check_batch}, K=3, pad 1; DCNv3 as in the module (offset/mask views of one projection, softmax in"
        " the op), DCNv4 on the fused offset_mask (masks as given). rel = max abs error / max |reference|."
    )
    cases = [("dcnv3", f"dcnv3 {k}", *v) for k, v in STAGES.items()]
    cases.append(("dcnv4", "dcnv4 stage1", *STAGES["stage1"]))
    for op, name, size, channels, group in cases:
        size = plan.stage_size(size)
        label = f"{name} {size}x{size}x{channels} G{group}"
        for dtype_name in ("float32", "float16", "bfloat16"):
            with report.item("ops", f"{label} {dtype_name}", need_s=5) as go:
                if go:
                    check_op(report, op, label, size, channels, group, dtype_name)
        _free_memory()


def check_compile(report: Report) -> None:
    """1c: torch.compile of one InternImage-T stage-1 block against eager."""
    import torch

    from internimage.models.internimage import InternImageBlock

    plan = report.plan
    cols = ["check", "output", "grad_input", "param grads (max)", "compile s", "eager / compiled ms", "status"]
    section = report.section("compile", "1c. torch.compile of one InternImage-T block vs eager", cols)
    size, channels, group = plan.stage_size(56), 64, 4
    section.notes.append(
        f"block of stage 1 (C={channels}, G={group}), input {plan.block_batch}x{size}x{size}, "
        f"torch.compile backend {plan.compile_backend}"
    )
    with report.item("compile", "train fp32 fwd+bwd", need_s=30) as go:
        if not go:
            return
        torch.manual_seed(0)
        eager = InternImageBlock(channels, group).to(plan.device)
        with torch.no_grad():  # official init zeroes the offset/mask projections: make the sampling non-trivial
            for layer in (eager.dcn.offset, eager.dcn.mask):
                layer.weight.normal_(0.0, 0.2)
        compiled_block = copy.deepcopy(eager)
        fullgraph = True
        x = torch.randn(plan.block_batch, size, size, channels, device=plan.device)
        start = time.monotonic()
        try:
            compiled = torch.compile(compiled_block, fullgraph=True, backend=plan.compile_backend)
            got = _block_step(compiled, x)
        except Exception as err:  # a graph break: record it, then measure what compiles with breaks
            section.notes.append(f"fullgraph=True failed ({last_line(err)}); compiled again with graph breaks")
            logger.warning("fullgraph compile failed:\n%s", traceback.format_exc())
            torch._dynamo.reset()
            fullgraph = False
            compiled = torch.compile(compiled_block, backend=plan.compile_backend)
            got = _block_step(compiled, x)
        compile_s = time.monotonic() - start
        ref = _block_step(eager, x)
        errs = [errors(g, r.double()) for g, r in zip(got[:2], ref[:2])]
        param = max((errors(g, r.double()) for g, r in zip(got[2], ref[2])), key=lambda e: e[1])
        timer = Timer(plan.device, plan.target_ms)
        samples = interleaved(
            timer,
            {"eager": lambda: _block_step(eager, x), "compiled": lambda: _block_step(compiled, x)},
            plan.rounds,
            report,
        )
        tol = 1e-3
        ok = all(rel <= tol for _, rel in (*errs, param))
        section.rows.append(
            {
                "check": f"train fp32 fwd+bwd (fullgraph={fullgraph})",
                "output": err_pair(*errs[0]),
                "grad_input": err_pair(*errs[1]),
                "param grads (max)": err_pair(*param),
                "compile s": f"{compile_s:.1f}",
                "eager / compiled ms": f"{statistics.median(samples['eager']):.2f} / "
                f"{statistics.median(samples['compiled']):.2f}",
                "status": pf(ok) + f" (rel tol {tol:.0e})",
            }
        )
        section.figures.append(
            {
                "check": "train fp32",
                "fullgraph": fullgraph,
                "errors": errs,
                "param_error": param,
                "compile_s": compile_s,
                "ms": samples,
            }
        )
    with report.item("compile", "eval bf16 autocast forward", need_s=30) as go:
        if not go:
            return
        eager.eval()
        compiled_eval = torch.compile(copy.deepcopy(eager), fullgraph=fullgraph, backend=plan.compile_backend)
        with torch.no_grad(), torch.autocast(plan.device, dtype=torch.bfloat16):
            start = time.monotonic()
            got_out = compiled_eval(x).float()
            compile_s = time.monotonic() - start
            ref_out = eager(x).float()
        err = errors(got_out, ref_out.double())
        tol = 3e-2
        section.rows.append(
            {
                "check": "eval bf16 autocast forward",
                "output": err_pair(*err),
                "compile s": f"{compile_s:.1f}",
                "status": pf(err[1] <= tol) + f" (rel tol {tol:.0e})",
            }
        )
        section.figures.append({"check": "eval bf16 autocast", "error": err, "compile_s": compile_s})


def _block_step(block, x) -> tuple[Any, Any, list[Any]]:
    """One training forward + backward: (output, grad_input, parameter gradients)."""
    for p in block.parameters():
        p.grad = None
    leaf = x.detach().clone().requires_grad_()
    out = block(leaf)
    (out * out.detach().roll(1, -1)).sum().backward()  # a non-uniform upstream gradient
    return out.detach(), leaf.grad, [p.grad for p in block.parameters()]


# ----------------------------------------------------------------------------------------------- section 2
def copy_bandwidth(report: Report, timer: Timer) -> float:
    """GB/s of ``dst.copy_(src)`` on a large tensor (bytes read + written), median of the rounds."""
    import torch

    plan = report.plan
    src = torch.empty(plan.copy_mib * 2**20, dtype=torch.uint8, device=plan.device).random_(0, 255)
    dst = torch.empty_like(src)
    samples = interleaved(timer, {"copy": lambda: dst.copy_(src)}, plan.rounds, report)["copy"]
    ms = statistics.median(samples)
    gbs = 2 * src.numel() / ms / 1e6
    section = report.sections["speed"]
    section.notes.append(f"copy bandwidth: {gbs:.0f} GB/s ({plan.copy_mib} MiB dst.copy_(src), read + write)")
    section.figures.append({"item": "copy", "mib": plan.copy_mib, "ms": samples, "gb_s": gbs})
    return gbs


def traffic_bytes(n: int, size: int, channels: int, group: int, elem: int, backward: bool) -> int:
    """Minimal bytes of the fused op: forward reads input, offset, mask and writes the output; backward reads
    grad_output, input, offset and mask and writes the three gradients."""
    pixels = n * size * size
    om = group * POINTS * 3
    forward = pixels * (2 * channels + om) * elem
    return forward + (pixels * (3 * channels + 2 * om) * elem if backward else 0)


def speed_case(report: Report, timer: Timer, copy_gbs: float, stage: str, dtype_name: str, mode: str) -> None:
    import torch

    from internimage.ops import dcnv3

    plan = report.plan
    size0, channels, group = STAGES[stage]
    size, n, dtype = plan.stage_size(size0), plan.speed_batch, getattr(torch, dtype_name)
    gen = torch.Generator(device=plan.device).manual_seed(0)
    x = torch.randn(n, size, size, channels, generator=gen, device=plan.device).to(dtype)
    proj = torch.randn(n, size, size, group * POINTS * 3, generator=gen, device=plan.device)
    proj[..., : group * POINTS * 2] *= 2.0
    proj = proj.to(dtype)
    grad = torch.randn(n, size, size, channels, generator=gen, device=plan.device).to(dtype)
    split = (group * POINTS * 2, group * POINTS)

    def call(backend: str) -> Callable[[], Any]:
        if mode == "fwd":

            def fwd() -> Any:
                with torch.no_grad():
                    offset, mask = proj.split(split, -1)
                    return dcnv3(x, offset, mask, KERNEL, 1, 1, 1, group, 1.0, backend=backend, softmax=True)

            return fwd
        xl, pl = x.detach().clone().requires_grad_(), proj.detach().clone().requires_grad_()

        def fwd_bwd() -> Any:
            xl.grad = pl.grad = None
            offset, mask = pl.split(split, -1)
            dcnv3(xl, offset, mask, KERNEL, 1, 1, 1, group, 1.0, backend=backend, softmax=True).backward(grad)

        return fwd_bwd

    samples = interleaved(timer, {b: call(b) for b in ("reference", "triton")}, plan.rounds, report)
    ref_ms, tri_ms = (statistics.median(samples[b]) for b in ("reference", "triton"))
    speedup = median_ratio(samples["reference"], samples["triton"])
    nbytes = traffic_bytes(n, size, channels, group, x.element_size(), mode == "fwd+bwd")
    gbs = nbytes / tri_ms / 1e6
    section = report.sections["speed"]
    section.rows.append(
        {
            "stage": f"{stage} {n}x{size}x{size}x{channels} G{group}",
            "dtype": dtype_name,
            "mode": mode,
            "reference ms": f"{ref_ms:.3f}",
            "triton ms": f"{tri_ms:.3f}",
            "speedup": f"{speedup:.2f}x",
            "triton GB/s": f"{gbs:.0f}",
            "% of copy": f"{100 * gbs / copy_gbs:.0f}%",
            "status": "ok",
        }
    )
    section.figures.append(
        {
            "stage": stage,
            "shape": [n, size, size, channels, group],
            "dtype": dtype_name,
            "mode": mode,
            "ms": samples,
            "reference_ms": ref_ms,
            "triton_ms": tri_ms,
            "speedup": speedup,
            "bytes": nbytes,
            "gb_s": gbs,
            "copy_fraction": gbs / copy_gbs,
        }
    )
    if stage == "stage1":
        report.target(f"Triton DCNv3 {mode} speedup, stage 1, N={n}, {dtype_name}", speedup, ">= 5x", speedup >= 5)
        if mode == "fwd":
            report.target(
                f"Triton DCNv3 forward bandwidth / copy bandwidth, stage 1, {dtype_name}",
                gbs / copy_gbs,
                ">= 0.50",
                gbs / copy_gbs >= 0.5,
                f" ({gbs:.0f} of {copy_gbs:.0f} GB/s)",
            )


def op_speed(report: Report) -> None:
    plan = report.plan
    cols = ["stage", "dtype", "mode", "reference ms", "triton ms", "speedup", "triton GB/s", "% of copy", "status"]
    section = report.section("speed", "2. DCNv3 op speed: Triton vs reference", cols)
    section.notes.append(
        f"median ms per call over {plan.rounds} interleaved rounds ({'perf_counter' if plan.dry_run else 'CUDA events'}"
        "); module layout (offset/mask views, softmax in the op); GB/s counts the minimal traffic"
    )
    if plan.dry_run:
        section.notes.append("dry run: Triton runs in its CPU interpreter, so these timings are not kernel speed")
    timer = Timer(plan.device, plan.target_ms)
    copy_gbs = float("nan")
    with report.item("speed", "copy bandwidth", need_s=5) as go:
        if go:
            copy_gbs = copy_bandwidth(report, timer)
    for dtype_name in plan.speed_dtypes:
        for stage in STAGES:
            for mode in ("fwd", "fwd+bwd"):
                with report.item("speed", f"{stage} {dtype_name} {mode}", need_s=10) as go:
                    if go:
                        speed_case(report, timer, copy_gbs, stage, dtype_name, mode)
                _free_memory()


# ----------------------------------------------------------------------------------------------- section 3
MODELS = {
    "InternImage-T": ("internimage", "internimage_t_1k_224"),
    "FlashInternImage-T": ("internimage", "flash_intern_image_t_1k_224"),
    "ConvNeXt-T": ("timm", "convnext_tiny"),
}


def build_model(source: str, name: str, device: str):
    import timm
    import torch

    import internimage

    torch.manual_seed(0)
    if source == "internimage":
        model = internimage.create_model(name, num_classes=1000, drop_path_rate=0.1)
    else:
        model = timm.create_model(name, num_classes=1000, drop_path_rate=0.1)
    return model.to(device)


@dataclass
class Bench:
    """One model under test: the module, its optimizer and whether it runs channels-last."""

    model: Any
    opt: Any
    channels_last: bool = False


def model_speed(report: Report) -> None:
    import torch
    import torch.nn.functional as F

    plan = report.plan
    cols = ["mode", *[f"{m} img/s" for m in MODELS], "InternImage/ConvNeXt", "Flash/ConvNeXt", "Flash/InternImage"]
    cols.append("status")
    section = report.section("models", "3. Models: images/s, ratios from interleaved rounds", cols)
    mem_cols = ["model", "state MB", "step peak growth MB", "total MB", "ratio to ConvNeXt-T", "status"]
    mem = report.section("memory", f"3b. Training memory (batch {plan.train_batch}, bf16 autocast, AdamW)", mem_cols)
    dev = plan.device
    if dev == "cuda":
        torch.backends.cudnn.benchmark = True
    benches: dict[str, Bench] = {}
    for label, (source, name) in MODELS.items():
        with report.item("models", f"build {label}", need_s=10) as go:
            if go:
                model = build_model(source, name, dev)
                benches[label] = Bench(model, torch.optim.AdamW(model.parameters(), lr=1e-5))
    if not benches:
        return
    images = {bs: torch.randn(bs, 3, plan.img_size, plan.img_size, device=dev) for bs in plan.infer_batches}
    images[plan.train_batch] = torch.randn(plan.train_batch, 3, plan.img_size, plan.img_size, device=dev)
    target = torch.randint(0, 1000, (plan.train_batch,), device=dev)

    def infer(bench: Bench, bs: int, dtype: str) -> Callable[[], Any]:
        x = images[bs].contiguous(memory_format=torch.channels_last) if bench.channels_last else images[bs]

        def run() -> Any:
            with torch.inference_mode(), torch.autocast(dev, dtype=getattr(torch, dtype)):
                return bench.model(x)

        return run

    def train(bench: Bench) -> Callable[[], Any]:
        x = images[plan.train_batch]
        x = x.contiguous(memory_format=torch.channels_last) if bench.channels_last else x

        def step() -> Any:
            with torch.autocast(dev, dtype=torch.bfloat16):
                loss = F.cross_entropy(bench.model(x).float(), target)
            bench.opt.zero_grad(set_to_none=True)
            loss.backward()
            bench.opt.step()

        return step

    timer = Timer(dev, plan.target_ms)
    big = max(plan.infer_batches)
    with report.item("models", "channels-last choice", need_s=20) as go:
        if go:
            choose_channels_last(report, timer, benches, lambda b: infer(b, big, plan.amp_dtypes[0]))
    modes: dict[str, tuple[str, Callable[[Bench], Callable[[], Any]]]] = {}
    for bs in plan.infer_batches:
        for dtype in plan.amp_dtypes:
            short = {"bfloat16": "bf16", "float16": "fp16"}[dtype]
            modes[f"infer bs{bs} {short}"] = ("infer", lambda b, bs=bs, dtype=dtype: infer(b, bs, dtype))
    modes[f"train bs{plan.train_batch} bf16"] = ("train", train)
    with report.item("models", "timing rounds", need_s=30) as go:
        if not go:
            return
        for bench in benches.values():
            bench.model.eval()
        fns: dict[str, Callable[[], Any]] = {}
        for label, bench in benches.items():
            for mode, (kind, make) in modes.items():
                fns[f"{label}|{mode}"] = _in_mode(bench.model, kind == "train", make(bench))
        samples = interleaved_models(timer, fns, list(benches), plan.rounds, report)
        for mode in modes:
            bs = int(mode.split()[1][2:])
            row = {"mode": mode, "status": "ok"}
            per = {label: samples.get(f"{label}|{mode}") for label in MODELS}
            for label, ms in per.items():
                row[f"{label} img/s"] = f"{bs * 1e3 / statistics.median(ms):.1f}" if ms else "-"
            ratios = {}
            for key, (a, b) in {
                "InternImage/ConvNeXt": ("InternImage-T", "ConvNeXt-T"),
                "Flash/ConvNeXt": ("FlashInternImage-T", "ConvNeXt-T"),
                "Flash/InternImage": ("FlashInternImage-T", "InternImage-T"),
            }.items():
                if per[a] and per[b]:
                    ratios[key] = median_ratio(per[b], per[a])  # img/s of a over img/s of b
                    row[key] = f"{ratios[key]:.2f}"
            section.rows.append(row)
            section.figures.append({"mode": mode, "batch": bs, "ms": per, "ratios": ratios})
            _model_targets(report, mode, big, plan.train_batch, ratios)
        section.notes.append(
            f"{len(next(iter(samples.values())))} rounds; images {plan.img_size}px; channels-last: "
            + ", ".join(f"{k} {'yes' if b.channels_last else 'no'}" for k, b in benches.items())
            + "; drop_path_rate 0.1 for all; ratios are img/s of the first over the second"
        )
    for label, bench in benches.items():
        with report.item("memory", label, need_s=5) as go:
            if go:
                training_memory(report, label, bench, _in_mode(bench.model, True, train(bench)))
    conv = next((f for f in mem.figures if f.get("model") == "ConvNeXt-T" and "total_mb" in f), None)
    for fig in mem.figures:
        if "total_mb" in fig and conv:
            fig["ratio"] = fig["total_mb"] / conv["total_mb"]
            next(r for r in mem.rows if r["model"] == fig["model"])["ratio to ConvNeXt-T"] = f"{fig['ratio']:.2f}"
    ii = next((f for f in mem.figures if f.get("model") == "InternImage-T" and "ratio" in f), None)
    report.target(
        "InternImage-T training memory / ConvNeXt-T",
        ii["ratio"] if ii else None,
        "<= 1.2x",
        (ii["ratio"] <= 1.2) if ii else None,
        "" if ii else " (no CUDA memory counters on the CPU)" if plan.dry_run else "",
    )
    del benches
    _free_memory()


def _in_mode(model, training: bool, fn: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        if model.training != training:
            model.train(training)
        return fn()

    return run


def interleaved_models(
    timer: Timer, fns: dict[str, Callable[[], Any]], labels: list[str], rounds: int, report: Report
) -> dict[str, list[float]]:
    """Like :func:`interleaved`, rotating the order of the models (each model runs all its modes in turn)."""
    iters = {key: timer.calibrate(fn, max_iters=20) for key, fn in fns.items()}
    samples: dict[str, list[float]] = {key: [] for key in fns}
    for r in range(rounds):
        if r and report.left() < report.plan.reserve_s:
            logger.warning("models: stopping after %d of %d rounds (time budget)", r, rounds)
            break
        order = labels[r % len(labels) :] + labels[: r % len(labels)]
        for label in order:
            for key, fn in fns.items():
                if key.startswith(label + "|"):
                    samples[key].append(timer.ms(fn, iters[key]))
        logger.info("models: round %d/%d done (t=%.0f s)", r + 1, rounds, report.elapsed())
    return samples


def choose_channels_last(report: Report, timer: Timer, benches: dict[str, Bench], make) -> None:
    """Per model, time the largest-batch inference both ways and keep the faster memory format."""
    import torch

    section = report.sections["models"]
    found = []
    for label, bench in benches.items():
        bench.model.eval()
        times = {}
        for cl in (False, True):
            bench.channels_last = cl
            bench.model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
            fn = make(bench)
            timer.calibrate(fn, warmup=2)
            times[cl] = statistics.median(timer.ms(fn, 1) for _ in range(3))
        bench.channels_last = times[True] < times[False]
        bench.model.to(memory_format=torch.channels_last if bench.channels_last else torch.contiguous_format)
        found.append(f"{label} {times[False]:.1f} / {times[True]:.1f} ms")
        section.figures.append({"item": "channels_last", "model": label, "ms_contiguous_vs_cl": times})
    section.notes.append("largest-batch inference, contiguous / channels-last: " + "; ".join(found))


def _model_targets(report: Report, mode: str, big: int, train_batch: int, ratios: dict[str, float]) -> None:
    if mode == f"infer bs{big} bf16":
        r = ratios.get("InternImage/ConvNeXt")
        report.target(
            f"InternImage-T / ConvNeXt-T, bf16 inference bs{big}", r, ">= 0.9x", None if r is None else r >= 0.9
        )
        f = ratios.get("Flash/InternImage")
        report.target(
            f"FlashInternImage-T / InternImage-T, bf16 inference bs{big}", f, "> 1x", None if f is None else f > 1
        )
    if mode == f"train bs{train_batch} bf16":
        r = ratios.get("InternImage/ConvNeXt")
        report.target(
            f"InternImage-T / ConvNeXt-T, training step bs{train_batch}",
            r,
            ">= 0.85x",
            None if r is None else r >= 0.85,
        )
        f = ratios.get("Flash/InternImage")
        report.target(
            f"FlashInternImage-T / InternImage-T, training step bs{train_batch}",
            f,
            "> 1x",
            None if f is None else f > 1,
        )


def training_memory(report: Report, label: str, bench: Bench, step: Callable[[], Any]) -> None:
    """Parameters + gradients + optimizer state, plus the peak growth of allocated memory during one step."""
    import torch

    section = report.sections["memory"]
    if report.plan.device != "cuda":
        section.rows.append({"model": label, "status": "skipped: torch.cuda memory counters need a GPU"})
        section.figures.append({"model": label, "skipped": "cpu"})
        return
    step()  # gradients and optimizer state exist from here on
    torch.cuda.synchronize()
    gc.collect()
    state = sum(p.numel() * p.element_size() for p in bench.model.parameters())
    state += sum(p.grad.numel() * p.grad.element_size() for p in bench.model.parameters() if p.grad is not None)
    for per_param in bench.opt.state.values():
        state += sum(t.numel() * t.element_size() for t in per_param.values() if torch.is_tensor(t))
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    growth = torch.cuda.max_memory_allocated() - before
    total = state + growth
    section.rows.append(
        {
            "model": label,
            "state MB": f"{state / 2**20:.0f}",
            "step peak growth MB": f"{growth / 2**20:.0f}",
            "total MB": f"{total / 2**20:.0f}",
            "status": "ok",
        }
    )
    section.figures.append(
        {"model": label, "state_mb": state / 2**20, "growth_mb": growth / 2**20, "total_mb": total / 2**20}
    )


# ----------------------------------------------------------------------------------------------- section 4
def make_image_folder(root: Path, per_class: int, size: int = 48, seed: int = 0) -> int:
    """Two classes of random PNGs whose dominant colour is the class (learnable in a few steps)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(2):
        folder = root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
            img[..., c] += 150
            Image.fromarray(img).save(folder / f"{i}.png")
    return 2 * per_class


def cli_command() -> list[str]:
    """The installed ``internimage`` console script, else the module (the checkout may not be installed)."""
    exe = shutil.which("internimage") or shutil.which("internimage", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "internimage.cli"]


def run_logged(report: Report, name: str, cmd: list[str], timeout: float) -> tuple[int, str, float]:
    """Run ``cmd`` in the repository, its output in logs/<name>.log: (return code, stdout, seconds)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    start = time.monotonic()
    logger.info("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=max(timeout, 5.0))
    seconds = time.monotonic() - start
    write_text(report.out / "logs" / f"{name}.log", f"$ {' '.join(cmd)}\n{proc.stdout}\n--- stderr ---\n{proc.stderr}")
    if proc.returncode != 0:
        tail = [line for line in proc.stderr.splitlines() if line.strip()]
        raise RuntimeError(f"{name} exited with {proc.returncode}: {tail[-1] if tail else '(no stderr)'}")
    return proc.returncode, proc.stdout, seconds


def training_smoke(report: Report) -> None:
    plan = report.plan
    cols = ["step", "figures", "seconds", "status"]
    section = report.section("smoke", "4. Training smoke: internimage train (20 steps, bf16) + eval", cols)
    steps = 20
    data = report.out / "smoke"
    run = data / "run"
    with report.item("smoke", "train", need_s=40) as go:
        if not go:
            return
        shutil.rmtree(data, ignore_errors=True)
        n_train = make_image_folder(data / "train", steps * plan.smoke_batch // 2)
        n_val = make_image_folder(data / "val", 2 * plan.smoke_batch, seed=1)
        cmd = [*cli_command(), "train", "--preset", "internimage_t_1k_224"]
        cmd += ["--train-data", str(data / "train"), "--val-data", str(data / "val"), "--output", str(run)]
        cmd += ["--device", plan.device, "--amp", "bf16", "--batch-size", str(plan.smoke_batch)]
        cmd += ["--workers", str(plan.smoke_workers), "--set", f"img_size={plan.smoke_img_size}", "epochs=1"]
        cmd += [f"max_steps={steps}", "eval_every=0", "log_every=5", "warmup_epochs=0", "ema=false"]
        _, out, seconds = run_logged(report, "train", cmd, report.left())
        result = json.loads(out.strip().splitlines()[-1])
        ok = result.get("step") == steps and math.isfinite(result.get("train_loss", math.nan))
        ok = ok and (run / "model.safetensors").is_file()
        device_line = _trainer_device(report.out / "logs" / "train.log")
        ok = ok and plan.device in device_line
        section.rows.append(
            {
                "step": f"train ({n_train} PNGs, batch {plan.smoke_batch}, {plan.smoke_img_size}px, {plan.device})",
                "figures": f"step {result.get('step')}, loss {result.get('train_loss', math.nan):.3f}, "
                f"val top-1 {result.get('top1', math.nan):.1f}%; {device_line}",
                "seconds": f"{seconds:.0f}",
                "status": pf(ok),
            }
        )
        section.figures.append({"step": "train", "result": result, "seconds": seconds, "cmd": cmd})
    with report.item("smoke", "eval", need_s=15) as go:
        if not go:
            return
        cmd = [*cli_command(), "eval", "--checkpoint", str(run / "model.safetensors"), "--val-data", str(data / "val")]
        cmd += ["--device", plan.device, "--batch-size", str(2 * plan.smoke_batch)]
        cmd += ["--workers", str(plan.smoke_workers), "--json"]
        _, out, seconds = run_logged(report, "eval", cmd, report.left())
        metrics = json.loads(out.strip().splitlines()[-1])
        ok = metrics.get("samples") == n_val and 0 <= metrics.get("top1", -1) <= 100
        section.rows.append(
            {
                "step": "eval model.safetensors",
                "figures": f"top-1 {metrics['top1']:.1f}%, loss {metrics['loss']:.3f}, "
                f"{int(metrics['samples'])} images",
                "seconds": f"{seconds:.0f}",
                "status": pf(ok),
            }
        )
        section.figures.append({"step": "eval", "metrics": metrics, "seconds": seconds, "cmd": cmd})


def _trainer_device(log: Path) -> str:
    """The trainer's 'N process(es) on DEVICE' log line, shortened."""
    match = re.search(r"process\(es\) on (\S+?),", log.read_text(errors="replace"))
    return f"ran on {match.group(1)}" if match else "device not found in the log"


# ----------------------------------------------------------------------------------------------- main
def guarded(report: Report, key: str, fn: Callable[[Report], None]) -> None:
    """Run one section; an error outside its items is recorded (table and log) and the next section runs."""
    try:
        fn(report)
    except Exception as err:
        logger.error("section %s failed:\n%s", key, traceback.format_exc())
        report.errors.append(f"section {key}: {last_line(err)}")
        _free_memory()


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
