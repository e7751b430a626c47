"""Sections 2 and 3 of the GPU check: operator speed against memory bandwidth, whole-model speed and training memory."""

from __future__ import annotations

import gc
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .report import KERNEL, POINTS, STAGES, Report, Timer, free_memory, interleaved, logger, median_ratio


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
                free_memory()


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
    free_memory()


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
