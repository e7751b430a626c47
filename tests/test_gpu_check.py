"""benchmarks/gpu_check.py: its bookkeeping (guards, budget, byte counts, pytest parsing) and a dry-run slice.

The whole dry run takes minutes on a small CPU (``python benchmarks/gpu_check.py --output DIR --dry-run``); these tests
run the environment section end to end, one interpreted operator check, and sections 5-7 (deformable attention,
detectors, occupancy) end to end at their dry-run sizes (about 15 s on 2 cores).
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

    yield types.SimpleNamespace(main=module.main, module=module, report=report, correctness=correctness, speed=speed)
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


# ----------------------------------------------------------------------------------------------- sections 5-7
NEW_SECTIONS = {"msda": "5. Multi-scale", "detectors": "6. Detectors", "occupancy": "7. Occupancy"}


def _dry_run(gc, tmp_path: Path, monkeypatch, *args: str) -> tuple[dict, str]:
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # main() sets it in a dry run; restored after the test
    assert gc.main(["--output", str(tmp_path), "--dry-run", "--no-pytest", *args]) == 0
    return json.loads((tmp_path / "gpu_check.json").read_text()), (tmp_path / "gpu_check.md").read_text()


def test_sections_5_to_7_dry_run_end_to_end(gc, tmp_path: Path, monkeypatch) -> None:
    data, table = _dry_run(gc, tmp_path, monkeypatch, "--sections", "5,6,7")
    assert not data["errors"] and not data["skipped"]
    sections = data["sections"]
    for key, title in NEW_SECTIONS.items():
        assert sections[key]["title"].startswith(title) and f"## {sections[key]['title']}" in table
        assert sections[key]["rows"] and all(row["status"] == "ok" for row in sections[key]["rows"]), key
    msda = sections["msda"]["rows"]
    assert {(r["dtype"], r["mode"]) for r in msda} == {
        (d, m) for d in ("float32", "bfloat16") for m in ("fwd", "fwd+bwd")
    }
    assert all(float(r["ms"]) > 0 for r in msda)
    detectors = {f["model"]: f for f in sections["detectors"]["figures"]}
    assert set(detectors) == {"DINO-4scale-T", "Mask R-CNN-T"}
    assert all(f["detections"] > 0 and f["images_per_s"] > 0 for f in detectors.values())
    assert detectors["Mask R-CNN-T"]["model_kwargs"]["box_score_thresh"] == 0.0  # the mask head runs
    occ = sections["occupancy"]["figures"]
    assert occ[0]["step"] == "build" and occ[0]["visible_fraction"] > 0.5
    assert [(f["step"], f["dtype"]) for f in occ[1:]] == [
        ("predict", "float32"),
        ("predict", "bfloat16"),
        ("train", "float32"),
        ("train", "bfloat16"),
    ]
    assert all(f["peak_mb"] is None for f in occ[1:])  # no CUDA counters on the CPU


def test_sections_5_to_7_skip_for_the_time_budget(gc, tmp_path: Path, monkeypatch) -> None:
    data, table = _dry_run(gc, tmp_path, monkeypatch, "--sections", "5,6,7", "--budget-s", "1e-6")
    for key in NEW_SECTIONS:
        rows = data["sections"][key]["rows"]
        assert rows and all(row["status"].startswith("skipped: time budget") for row in rows), rows
    assert any(s.startswith("7. Occupancy") for s in data["skipped"]) and "Skipped for the time budget" in table


def test_a_failing_section_is_recorded_and_the_next_one_runs(gc, tmp_path: Path, monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise RuntimeError("CUDA out of memory\nTried to allocate 2.00 GiB")

    monkeypatch.setattr(gc.module, "msda_inputs", boom)
    data, _ = _dry_run(gc, tmp_path, monkeypatch, "--sections", "5,6")
    msda = data["sections"]["msda"]["rows"]
    assert len(msda) == 2 and all(r["status"] == "error: RuntimeError: Tried to allocate 2.00 GiB" for r in msda)
    assert [r["status"] for r in data["sections"]["detectors"]["rows"]] == ["ok", "ok"]


def test_section_cap_skips_items_of_that_section_only(gc, tmp_path: Path) -> None:
    report = _report(gc, tmp_path)
    report.section("s", "S", ["item", "status"])
    clock = gc.module.SectionClock("s", cap_s=1.0)
    with gc.module.budget_item(report, clock, "fits", need_s=0.5) as go:
        assert go
    with gc.module.budget_item(report, clock, "too long", need_s=5.0) as go:
        assert not go
    rows = report.sections["s"].rows
    assert rows[0]["status"].startswith("skipped: time budget (section cap 1 s") and rows[0]["item"] == "too long"
    assert report.skipped == ["S: too long"]


def test_camera_rig_looks_out_all_around_the_car(gc) -> None:
    import math

    import torch

    from internimage.occupancy.models import union2one

    rig = gc.module.camera_rig(900, 1600)  # (6, 4, 4) lidar -> pixels
    for k in range(6):
        a = math.radians(60 * k)
        ahead = torch.tensor([20 * math.cos(a), 20 * math.sin(a), 1.5, 1.0])  # 20 m along camera k's axis
        u, v, depth = (rig[k] @ ahead)[:3].tolist()
        assert depth == pytest.approx(20, abs=1e-3)
        assert (u / depth, v / depth) == pytest.approx((800, 450), abs=1e-2)  # the principal point
        behind = rig[(k + 3) % 6] @ ahead
        assert behind[2] < 0  # the opposite camera does not see it
    relative, exists = union2one(gc.module.can_bus_queue(4))
    steps = relative[0, 1:, :2].norm(dim=-1)
    assert torch.allclose(steps, torch.full_like(steps, 0.5), atol=1e-3) and exists[0, 1:].all()
    assert relative[0, 1:, -1].tolist() == pytest.approx([math.degrees(0.02)] * 3, abs=1e-3)


def test_sections_argument_takes_5_to_7(gc) -> None:
    args = gc.module.parse_args(["--output", "x", "--sections", "6"])
    assert args.sections == {"0", "6"}
    assert gc.module.parse_args(["--output", "x"]).sections == set("01234567")
    with pytest.raises(SystemExit):
        gc.module.parse_args(["--output", "x", "--sections", "8"])
