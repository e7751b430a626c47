"""Export: ONNX (standard ops) and .pt2 against eager on two sizes, TRTDCNv3 plugin nodes, benchmark, CLI.

Exports are slow (the dynamo exporter reasons symbolically about every shape), so each artifact is made once per
module and shared: test_32 -> onnx + pt2 from one trace; test_h_32 -> onnx-trt; UperNet -> onnx; detector -> pt2.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from internimage.cli import main
from internimage.export import (
    TRT_ATTRIBUTES,
    build_exportable,
    check_trt_nodes,
    detection_postprocess,
    export,
    load_pt2,
    trace,
    trt_dcnv3_numpy,
)
from internimage.export.benchmark import benchmark, format_table, write_csv
from internimage.export.models import ExportAdaptiveAvgPool2d
from internimage.models.checkpoint import CheckpointError
from internimage.ops import dcnv3_reference, make_args

pytestmark = pytest.mark.slow

ATOL = 1e-4
SHAPES = [(2, 3, 64, 64), (1, 3, 96, 128)]


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def cls32():
    torch.manual_seed(0)
    model = build_exportable("classification", "internimage_test_32")
    _randomize_dcn(model.module)
    return model


@pytest.fixture(scope="module")
def cls32_exports(cls32, out_dir):
    program = trace(cls32)
    onnx = export(cls32, out_dir / "t32.onnx", "onnx", verify_shapes=SHAPES, program=program)
    pt2 = export(cls32, out_dir / "t32.pt2", "pt2", verify_shapes=SHAPES, program=program)
    return onnx, pt2


@pytest.fixture(scope="module")
def h32_trt(out_dir):
    pytest.importorskip("onnxruntime_extensions")
    torch.manual_seed(0)
    model = build_exportable("classification", "internimage_test_h_32")
    _randomize_dcn(model.module)
    return model, export(model, out_dir / "h32.trt.onnx", "onnx-trt", verify_shapes=SHAPES)


def _randomize_dcn(module: torch.nn.Module) -> None:
    # Official init zeroes the offset/mask projections: give them weights so sampling leaves the grid.
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith(("dcn.offset.weight", "dcn.mask.weight")):
                p.normal_(0, 0.5)


def test_onnx_matches_eager_on_two_sizes(cls32_exports):
    onnx, _ = cls32_exports
    assert [s for s, _ in onnx.errors] == SHAPES
    assert onnx.max_error < ATOL, onnx.errors
    assert [f.name for f in onnx.files] == ["t32.onnx"]  # weights inside: no external .data file


def test_onnx_has_standard_ops_and_dynamic_axes(cls32_exports):
    import onnx

    model = onnx.load(str(cls32_exports[0].path))
    ops = {(n.domain, n.op_type) for n in model.graph.node}
    assert ("", "GridSample") in ops
    assert all(domain in ("", "ai.onnx") for domain, _ in ops), ops
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.HasField("dim_param") for d in dims] == [True, False, True, True]


def test_pt2_reloads_and_runs_other_size(cls32, cls32_exports):
    _, pt2 = cls32_exports
    assert pt2.max_error < ATOL, pt2.errors
    module = load_pt2(pt2.path)
    x = torch.randn(3, 3, 128, 64)
    with torch.no_grad():
        assert torch.allclose(module(x), cls32.module(x), atol=ATOL)


def test_trt_nodes_have_plugin_attributes(h32_trt):
    model, report = h32_trt
    nodes = check_trt_nodes(report.path)
    blocks = sum(1 for m in model.module.modules() if type(m).__name__ == "DCNv3")
    assert report.trt_nodes == len(nodes) == blocks
    for attrs in nodes:
        assert set(attrs) == set(TRT_ATTRIBUTES)
        assert (attrs["kernel_h"], attrs["stride_h"], attrs["pad_h"], attrs["im2col_step"]) == (3, 1, 1, 256)
        assert attrs["group"] * attrs["group_channels"] in (16, 32, 64, 128)
        assert isinstance(attrs["offset_scale_f"], float)


def test_trt_model_runs_with_reference_plugin(h32_trt):
    _, report = h32_trt
    assert [s for s, _ in report.errors] == SHAPES
    assert report.max_error < ATOL, report.errors


def test_check_trt_nodes_rejects_missing_attribute(h32_trt, tmp_path):
    import onnx

    model = onnx.load(str(h32_trt[1].path))
    node = next(n for n in model.graph.node if n.op_type == "TRTDCNv3")
    kept = [a for a in node.attribute if a.name != "group_channels"]
    del node.attribute[:]
    node.attribute.extend(kept)
    onnx.save(model, str(tmp_path / "bad.onnx"))
    with pytest.raises(RuntimeError, match="attributes"):
        check_trt_nodes(tmp_path / "bad.onnx")


def test_trt_numpy_kernel_matches_reference():
    gen = torch.Generator().manual_seed(1)
    args = make_args(3, 2, 1, 1, group=2, offset_scale=2.0, remove_center=True)
    x = torch.randn(2, 9, 7, 8, generator=gen)
    ho, wo = args.output_size(9, 7)
    offset = 3 * torch.randn(2, ho, wo, 2 * 8 * 2, generator=gen)
    mask = torch.rand(2, ho, wo, 2 * 8, generator=gen)
    attrs = dict(kernel_h=3, kernel_w=3, stride_h=2, stride_w=2, pad_h=1, pad_w=1, dilation_h=1, dilation_w=1)
    attrs.update(group=2, group_channels=4, offset_scale_f=2.0, im2col_step=256, remove_center=1)
    got = trt_dcnv3_numpy(x.numpy(), offset.numpy(), mask.numpy(), **attrs)
    np.testing.assert_allclose(got, dcnv3_reference(x, offset, mask, args).numpy(), atol=1e-6)


@pytest.mark.parametrize("scale", [2, 3, 6, (2, 3)])
def test_export_adaptive_pool_matches_torch(scale):
    for size in [(2, 2), (3, 4), (7, 5), (13, 12)]:
        x = torch.randn(2, 3, *size)
        torch.testing.assert_close(ExportAdaptiveAvgPool2d(scale)(x), F.adaptive_avg_pool2d(x, scale))


def test_segmentation_onnx_two_sizes(out_dir):
    torch.manual_seed(0)
    model = build_exportable("segmentation", "internimage_test_32", num_classes=5)
    _randomize_dcn(model.module)
    report = export(model, out_dir / "seg.onnx", "onnx", verify_shapes=SHAPES)
    # 96x128 puts 3x4 maps into the 2/3/6 pyramid pooling: exactly where fixed-kernel pooling would go wrong.
    assert report.max_error < ATOL, report.errors


def test_detection_pt2_and_postprocess(out_dir):
    torch.manual_seed(0)
    model = build_exportable("detection", "internimage_test_32", num_classes=3)
    _randomize_dcn(model.module)
    shapes = [(2, 3, 128, 128), (1, 3, 96, 160)]
    report = export(model, out_dir / "det.pt2", "pt2", verify_shapes=shapes)
    assert report.max_error < ATOL, report.errors
    # The exported dense part + torchvision post-processing == the full detector.
    detector = model.full_model
    image = torch.rand(3, 128, 160)
    x = detector.transform.normalize(image)[None]
    outputs = load_pt2(report.path)(x)
    got = detection_postprocess(detector, x, list(outputs))[0]
    with torch.no_grad():
        want = detector([image])[0]
    assert got["boxes"].shape == want["boxes"].shape
    # The untrained head scores many boxes near 1/3: a 1e-7 difference may swap two of them, so compare in a
    # canonical order (label, then left edge).
    got_order = torch.argsort(got["labels"] * 1e4 + got["boxes"][:, 0])
    want_order = torch.argsort(want["labels"] * 1e4 + want["boxes"][:, 0])
    assert torch.equal(got["labels"][got_order], want["labels"][want_order])
    torch.testing.assert_close(got["boxes"][got_order], want["boxes"][want_order], atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(got["scores"][got_order], want["scores"][want_order], atol=1e-4, rtol=1e-4)


def test_export_rejects_bad_input(cls32, tmp_path):
    with pytest.raises(ValueError, match="format"):
        export(cls32, tmp_path / "x.onnx", "tflite")
    with pytest.raises(ValueError, match="task"):
        build_exportable("tracking", "internimage_test_32")


def test_cli_export_errors_are_one_line(tmp_path, capsys):
    assert main(["export", "internimage_test_32", "--format", "onnx,tflite", "-o", str(tmp_path / "m")]) == 1
    assert "--format must be among" in capsys.readouterr().err
    assert main(["export", "internimage_test_32", "--checkpoint", str(tmp_path / "none.pt")]) == 1
    assert "checkpoint not found" in capsys.readouterr().err


def test_benchmark_table_and_csv(cls32, cls32_exports, tmp_path):
    results = benchmark(
        cls32, ["eager", "onnxruntime"], batch=2, size=64, warmup=1, iters=3, onnx_path=str(cls32_exports[0].path)
    )
    assert [r.backend for r in results] == ["eager", "onnxruntime"]
    assert all(r.latency_ms > 0 and r.throughput > 0 and r.size == 64 for r in results)
    table = format_table(results)
    assert table.count("\n") == 3 and "onnxruntime" in table
    write_csv(results, tmp_path / "b.csv")
    lines = (tmp_path / "b.csv").read_text().splitlines()
    assert lines[0].startswith("backend,batch,size,latency_ms") and len(lines) == 3
    with pytest.raises(ValueError, match="unknown backend"):
        benchmark(cls32, ["tensorrt"])


def test_segmentation_export_builds_the_head_of_the_preset():
    # A Mask2Former preset exports Mask2Former (it once exported a UperNet); built on the meta device: no memory.
    with torch.device("meta"):
        m2f = build_exportable("segmentation", "mask2former_internimage_h_896_80k_cocostuff2ade20k_ss").module
        uper = build_exportable("segmentation", "upernet_internimage_t_512_160k_ade20k").module
    assert [type(m).__name__ for m in m2f.children()] == ["InternImage", "Mask2FormerHead"]
    assert [type(m).__name__ for m in uper.children()][:2] == ["InternImage", "UPerHead"]
    assert abs(sum(p.numel() for p in m2f.parameters()) / 1e9 - 1.31) < 0.005  # the official segmentation README


def _our_checkpoint(path, model, task: str, fields: dict) -> str:
    """Weights + stored model fields, as ``internimage train`` writes its ``model.safetensors``."""
    import json

    from internimage.models.checkpoint import save_state_dict

    save_state_dict(model.state_dict(), path, {"task": task, f"{task}_config": json.dumps(fields)})
    return str(path)


def test_export_builds_the_segmentor_our_checkpoint_describes(tmp_path, capsys):
    # Layer scale on a backbone that has none by default, narrow heads, 5 named classes: export used to build the
    # default UperNet (150 classes, no gamma) and refuse the file.
    from internimage.segmentation import SegmentationConfig, build_segmentor

    cfg = SegmentationConfig(model="internimage_test_32", num_classes=5, classes=list("abcde"), decode_channels=16)
    cfg.aux_channels, cfg.layer_scale = 8, 0.5
    torch.manual_seed(0)
    trained = build_segmentor(cfg, load_pretrained=False).eval()
    ck = _our_checkpoint(tmp_path / "seg.safetensors", trained, "segmentation", cfg.model_fields())
    x = torch.randn(1, 3, 64, 64)
    for name in (None, "internimage_test_32"):
        model = build_exportable("segmentation", name, ck)
        with torch.no_grad():
            torch.testing.assert_close(model.module(x), trained(x), rtol=0, atol=1e-6)  # export-friendly pooling
    with pytest.raises(CheckpointError, match="conv_seg"):  # another class count: refused, not half-loaded
        build_exportable("segmentation", None, ck, num_classes=3)
    line = "holds a model on internimage_test_32, not internimage_test_h_32"
    assert main(["export", "internimage_test_h_32", "--task", "segmentation", "--checkpoint", ck]) == 1
    assert line in capsys.readouterr().err
    assert main(["export", "--task", "segmentation", "-o", str(tmp_path / "x.onnx")]) == 1
    assert "name the model to export" in capsys.readouterr().err and not (tmp_path / "x.onnx").exists()


def test_export_builds_the_detector_our_checkpoint_describes(tmp_path, capsys):
    from internimage.detection import DetectionConfig, build_detector_from_config

    widths = {"fpn_channels": 32, "mask_channels": 16, "head_conv_channels": 16, "head_fc_dim": 64}
    cfg = DetectionConfig(model="internimage_test_32", arch="cascade_mask_rcnn", num_classes=2, model_kwargs=widths)
    cfg.classes, cfg.layer_scale = ["box", "disc"], 0.5
    torch.manual_seed(0)
    trained = build_detector_from_config(cfg, load_pretrained=False).eval()
    ck = _our_checkpoint(tmp_path / "det.safetensors", trained, "detection", cfg.model_fields())
    model = build_exportable("detection", None, ck)
    got, want = model.full_model.state_dict(), trained.state_dict()
    assert type(model.full_model) is type(trained) and set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert main(["export", "--task", "detection", "--arch", "dino", "--checkpoint", ck]) == 1
    assert "is a cascade_mask_rcnn detector, not --arch dino" in capsys.readouterr().err
