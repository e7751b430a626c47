"""Sections 0 and 1 of the GPU check: the environment, the CUDA tests, the operators against the reference, compile."""

from __future__ import annotations

import copy
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from .report import (
    KERNEL,
    POINTS,
    REPO,
    STAGES,
    TOLERANCE,
    Plan,
    Report,
    Timer,
    err_pair,
    free_memory,
    interleaved,
    last_line,
    logger,
)


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
        free_memory()


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
