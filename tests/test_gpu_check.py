"""benchmarks/gpu_check.py: its bookkeeping (guards, budget, byte counts, pytest parsing) and a dry-run slice.

The whole dry run takes minutes on a small CPU (``python benchmarks/gpu_check.py --output DIR --dry-run``); these tests
run the environment section end to end and one interpreted operator check.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gc():
    """The script's ``main`` and its parts (``benchmarks/gpucheck``: report, correctness, speed)."""
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)  # puts benchmarks/ on sys.path for its gpucheck package
    from gpucheck import correctness, report, speed

    yield types.SimpleNamespace(main=module.main, report=report, correctness=correctness, speed=speed)
    sys.modules.pop("gpu_check", None)


def _report(gc, tmp_path: Path, budget_s: float = 100.0):
    return gc.report.Report(tmp_path, budget_s, gc.report.make_plan(True, None), ["gpu_check"])


def test_item_records_errors_with_their_last_line_and_goes_on(gc, tmp_path: Path) -> None:
    report = _report(gc, tmp_path)
    report.section("s", "S", ["item", "value", "status"])
    with report.item("s", "broken") as go:
        assert go
        raise ValueError("first line\nthe | last line")
    ran = False
    with report.item("s", "next") as go:
        ran = go
    assert ran
    rows = report.sections["s"].rows
    assert rows == [{"item": "broken", "status": "error: ValueError: the / last line"}]  # '|' would break the table
    assert "the | last line" in report.sections["s"].figures[0]["error"]  # full traceback kept for the JSON
    assert "| broken |  | error: ValueError: the / last line |" in report.markdown()


def test_items_after_the_budget_are_skipped_and_listed(gc, tmp_path: Path) -> None:
    report = _report(gc, tmp_path, budget_s=1e-9)
    report.section("s", "S", ["item", "status"])
    with report.item("s", "late", need_s=0.0) as go:
        assert not go
    assert report.skipped == ["S: late"]
    assert report.sections["s"].rows[0]["status"].startswith("skipped: budget")
    assert "Skipped for the time budget: S: late" in report.markdown()


def test_traffic_bytes_counts_each_tensor_once(gc) -> None:
    # 1 image of 2x2 pixels, C=8, G=1, P=9, fp32. Forward: x (8) + offset (18) + mask (9) + out (8) per pixel.
    assert gc.speed.traffic_bytes(1, 2, 8, 1, 4, backward=False) == 4 * (8 + 18 + 9 + 8) * 4
    # Backward adds grad_out, x, offset, mask read and grad_x, grad_offset, grad_mask written.
    backward = 4 * (8 + 8 + 18 + 9 + 8 + 18 + 9) * 4
    assert gc.speed.traffic_bytes(1, 2, 8, 1, 4, backward=True) == 4 * (8 + 18 + 9 + 8) * 4 + backward


def test_pytest_output_parsing(gc) -> None:
    text = "..s.F\nFAILED tests/test_a.py::test_x - boom\n==== 1 failed, 3 passed, 1 skipped in 2.50s ====\n"
    assert gc.correctness.pytest_summary(text) == "1 failed, 3 passed, 1 skipped in 2.50s"
    assert gc.correctness.progress_counts("..sF. [ 40%]\nsE\n") == "3 passed, 2 skipped, 1 failed, 1 error"
    assert gc.correctness.progress_counts("collecting ...") == "no test finished"


def test_torch_range_check(gc) -> None:
    import torch

    assert gc.correctness.version_satisfies("2.11.0+cu130", ">=2.4")
    assert not gc.correctness.version_satisfies("2.3.1", ">=2.4")
    assert not gc.correctness.version_satisfies("3.0.0", ">=2.4,<3")
    assert gc.correctness.version_satisfies(torch.__version__, gc.correctness.declared_torch_spec())


def test_dry_run_environment_section_writes_table_and_json(gc, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # main() sets it in a dry run; restored after the test
    assert gc.main(["--output", str(tmp_path), "--dry-run", "--sections", "0"]) == 0
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    checks = {row["check"]: row for row in data["sections"]["env"]["rows"]}
    assert checks["torch in the declared range"]["status"] == "ok"
    assert checks["internimage from this checkout"]["status"] == "ok"
    assert data["dry_run"] and not data["errors"] and not data["skipped"]
    table = (tmp_path / "gpu_check.md").read_text()
    assert table in capsys.readouterr().out and "DRY RUN" in table
    assert (tmp_path / "gpu_check.log").stat().st_size > 0


def test_one_interpreted_operator_check(gc, tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    report = _report(gc, tmp_path)
    report.section("ops", "ops", ["shape", "dtype", "output", "grad_input", "grad_offset", "grad_mask", "status"])
    gc.correctness.check_op(report, "dcnv3", "stage4", 1, 512, 32, "float32")
    (row,) = report.sections["ops"].rows
    assert row["status"] == "ok", row
    fig = report.sections["ops"].figures[0]
    assert 0 < fig["grad_offset_rel"] < 1e-4 and fig["shape"] == [1, 1, 1, 512, 32]
