"""Latency, throughput and memory of one model under several backends (PyTorch eager, compiled, onnxruntime).

Memory is the peak resident-set growth of the process while a backend warms up and runs (sampled every 2 ms from
``/proc/self/statm``; it includes ``torch.compile``'s and onnxruntime's own buffers), or the peak CUDA allocation
for the PyTorch backends on a GPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from .models import ExportableModel

__all__ = ["BACKENDS", "BenchResult", "benchmark", "format_table", "write_csv"]

logger = logging.getLogger(__name__)

BACKENDS = ("eager", "compiled", "onnxruntime")


@dataclasses.dataclass
class BenchResult:
    """One backend's figures.

    Attributes:
        backend: ``eager``, ``compiled`` or ``onnxruntime``.
        batch: Images per call.
        size: Input side (H = W).
        latency_ms: Median wall time of one call.
        p90_ms: 90th-percentile wall time of one call.
        throughput: Images per second (batch / mean call time).
        memory_mb: Peak memory growth (RSS on CPU, CUDA allocation on GPU) while warming up and running.
        setup_s: Time to get the backend ready (compile, or ONNX export + session) including warm-up.
    """

    backend: str
    batch: int
    size: int
    latency_ms: float
    p90_ms: float
    throughput: float
    memory_mb: float
    setup_s: float


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):  # not Linux: ru_maxrss is the best portable figure (never decreases)
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _PeakMemory:
    """Peak RSS growth over the block (a 2 ms sampling thread), or peak CUDA allocation on a GPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0
        self._stop = threading.Event()

    def _sample(self, base: int) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss_bytes() - base)

    @contextlib.contextmanager
    def track(self) -> Iterator[_PeakMemory]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            yield self
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - base
            return
        base = _rss_bytes()
        thread = threading.Thread(target=self._sample, args=(base,), daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()
            self.peak = max(self.peak, _rss_bytes() - base)


def _time_calls(call: Callable[[], object], iters: int, sync: Callable[[], None]) -> list[float]:
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - start)
    return times


def _torch_runner(model: ExportableModel, x: torch.Tensor, compiled: bool) -> Callable[[], object]:
    module = model.module.to(x.device)
    if compiled:
        module = torch.compile(module)

    def call() -> object:
        with torch.inference_mode():
            return module(x)

    return call


def _ort_runner(
    model: ExportableModel, x: torch.Tensor, onnx_path: str | None, workdir: str, threads: int | None
) -> Callable[[], object]:
    from .core import export, ort_session

    if onnx_path is None:
        onnx_path = str(Path(workdir) / "model.onnx")
        export(model, onnx_path, "onnx", verify_shapes=[])
    providers = ["CPUExecutionProvider"]
    if x.device.type == "cuda":
        providers.insert(0, "CUDAExecutionProvider")
    session = ort_session(onnx_path, "onnx", providers, threads)
    name = session.get_inputs()[0].name
    feed = {name: x.cpu().numpy()}

    def call() -> object:
        return session.run(None, feed)

    return call


def benchmark(
    model: ExportableModel,
    backends: Sequence[str] = BACKENDS,
    batch: int = 1,
    size: int = 224,
    warmup: int = 3,
    iters: int = 20,
    device: str = "cpu",
    onnx_path: str | None = None,
    threads: int | None = None,
) -> list[BenchResult]:
    """Time ``model`` under each backend on random (batch, C, size, size) inputs.

    Args:
        model: From :func:`~internimage.export.models.build_exportable`.
        backends: Any of :data:`BACKENDS`.
        batch: Images per call.
        size: Input side; rounded to the stride.
        warmup: Untimed calls first (``compiled`` compiles in the first one).
        iters: Timed calls.
        device: ``cpu`` or ``cuda`` (onnxruntime then uses its CUDA provider when installed).
        onnx_path: An exported ``.onnx`` of the same model for ``onnxruntime``; default: exported to a temp dir.
        threads: Intra-op threads of onnxruntime (PyTorch's are set with ``torch.set_num_threads``).

    Returns:
        One :class:`BenchResult` per backend, in order.
    """
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown backend(s) {unknown}; choose among {BACKENDS}")
    if batch < 1 or iters < 1 or warmup < 0:
        raise ValueError(f"need batch >= 1, iters >= 1, warmup >= 0 (got {batch}, {iters}, {warmup})")
    dev = torch.device(device)
    side = max(model.min_side, round(size / model.size_multiple) * model.size_multiple)
    x = torch.randn(batch, model.in_chans, side, side, generator=torch.Generator().manual_seed(0)).to(dev)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        for backend in backends:
            tracker = _PeakMemory(dev)
            with tracker.track():
                start = time.perf_counter()
                if backend == "onnxruntime":
                    call = _ort_runner(model, x, onnx_path, workdir, threads)
                else:
                    call = _torch_runner(model, x, compiled=backend == "compiled")
                for _ in range(warmup):
                    call()
                sync()
                setup = time.perf_counter() - start
                times = _time_calls(call, iters, sync)
            ordered = sorted(times)
            result = BenchResult(
                backend=backend,
                batch=batch,
                size=side,
                latency_ms=1e3 * statistics.median(times),
                p90_ms=1e3 * ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
                throughput=batch / statistics.fmean(times),
                memory_mb=tracker.peak / 2**20,
                setup_s=setup,
            )
            logger.info("%s: %.1f ms/batch", backend, result.latency_ms)
            results.append(result)
    model.module.to("cpu")
    return results


_COLUMNS = (
    ("backend", "backend", "{}"),
    ("batch", "batch", "{}"),
    ("size", "size", "{}"),
    ("latency_ms", "latency ms (median)", "{:.1f}"),
    ("p90_ms", "p90 ms", "{:.1f}"),
    ("throughput", "images/s", "{:.1f}"),
    ("memory_mb", "peak mem MB", "{:.0f}"),
    ("setup_s", "setup s", "{:.1f}"),
)


def format_table(results: Sequence[BenchResult]) -> str:
    """A Markdown table of ``results``."""
    rows = [[fmt.format(getattr(r, key)) for key, _, fmt in _COLUMNS] for r in results]
    header = [title for _, title, _ in _COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(results: Sequence[BenchResult], path: str | os.PathLike) -> None:
    """Write ``results`` as CSV (one row per backend), atomically."""
    import csv
    import io

    from ..io import atomic_write

    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow([key for key, _, _ in _COLUMNS])
    for r in results:
        writer.writerow([getattr(r, key) for key, _, _ in _COLUMNS])
    atomic_write(path, buf.getvalue())
