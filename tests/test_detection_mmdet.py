"""Official mmdet 2.x detection checkpoints and numerics (issue #16).

Everything "official" here is written from the original sources, never from our modules: tensor names and shapes
from ``detection/configs/coco/{mask_rcnn,cascade}_internimage_*`` and ``detection/mmdet_custom/models/backbones/
intern_image.py`` plus mmdet 2.28's ``FPN``, ``RPNHead``, ``Shared2FCBBoxHead``, ``ConvFCBBoxHead`` (mmcv
``ConvModule``: ``conv`` + ``bn`` for SyncBN, conv without bias), ``FCNMaskHead``; formulas from mmdet 2.28's
``delta2bbox``, ``AnchorGenerator``, ``MaxIoUAssigner.assign_wrt_overlaps``, ``FCNMaskHead._do_paste_mask`` and
``CascadeRoIHead.simple_test``, re-implemented below in float64.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from internimage.detection.models import build_detector, load_detector_weights
from internimage.detection.models.anchor_utils import MMDetAnchorGenerator
from internimage.detection.models.box_coding import DeltaXYWHCoder, MaxIoUMatcher
from internimage.detection.models.cascade_roi_heads import (
    DEFAULT_STAGE_STDS,
    CascadeRoIHeads,
    ConvFCBoxHead,
    FCNMaskHead,
)
from internimage.detection.models.roi_heads import mask_targets, paste_masks
from internimage.detection.presets import get_preset, list_presets

# --------------------------------------------------------------------------------- official tensor layouts
# Backbones of the official detection configs (channels, depths, groups, post_norm); all use layer_scale=1.0,
# mlp_ratio 4, 3x3 DCNv3 (K = 9 sampling points).
OFFICIAL_BACKBONES = {
    "internimage_t": (64, (4, 4, 18, 4), (4, 8, 16, 32), False),
    "internimage_s": (80, (4, 4, 21, 4), (5, 10, 20, 40), True),
    "internimage_b": (112, (4, 4, 21, 4), (7, 14, 28, 56), True),
    "internimage_l": (160, (5, 5, 22, 5), (10, 20, 40, 80), True),
    "internimage_xl": (192, (5, 5, 24, 5), (12, 24, 48, 96), True),
}


def official_backbone(channels: int, depths, groups, post_norm: bool) -> dict[str, tuple[int, ...]]:
    """``InternImage`` (detection copy) state-dict shapes, ``backbone.`` prefix included."""
    out: dict[str, tuple[int, ...]] = {}
    c2 = channels // 2
    # StemLayer: conv1 -> [to_channels_last, LN, to_channels_first] -> GELU -> conv2 -> [to_channels_last, LN]
    out.update({"patch_embed.conv1.weight": (c2, 3, 3, 3), "patch_embed.conv1.bias": (c2,)})
    out.update({"patch_embed.norm1.1.weight": (c2,), "patch_embed.norm1.1.bias": (c2,)})
    out.update({"patch_embed.conv2.weight": (channels, c2, 3, 3), "patch_embed.conv2.bias": (channels,)})
    out.update({"patch_embed.norm2.1.weight": (channels,), "patch_embed.norm2.1.bias": (channels,)})
    for i, (depth, g) in enumerate(zip(depths, groups)):
        c = channels * 2**i
        for j in range(depth):
            p = f"levels.{i}.blocks.{j}."
            shapes = {
                "norm1.0.weight": (c,), "norm1.0.bias": (c,),
                # DCNv3: dw_conv = [Conv2d(c, c, 3, groups=c), [to_channels_last, LN], GELU]
                "dcn.dw_conv.0.weight": (c, 1, 3, 3), "dcn.dw_conv.0.bias": (c,),
                "dcn.dw_conv.1.1.weight": (c,), "dcn.dw_conv.1.1.bias": (c,),
                "dcn.offset.weight": (g * 9 * 2, c), "dcn.offset.bias": (g * 9 * 2,),
                "dcn.mask.weight": (g * 9, c), "dcn.mask.bias": (g * 9,),
                "dcn.input_proj.weight": (c, c), "dcn.input_proj.bias": (c,),
                "dcn.output_proj.weight": (c, c), "dcn.output_proj.bias": (c,),
                "norm2.0.weight": (c,), "norm2.0.bias": (c,),
                "mlp.fc1.weight": (4 * c, c), "mlp.fc1.bias": (4 * c,),
                "mlp.fc2.weight": (c, 4 * c), "mlp.fc2.bias": (c,),
                "gamma1": (c,), "gamma2": (c,),
            }  # fmt: skip
            out.update({p + k: v for k, v in shapes.items()})
        if not post_norm:  # InternImageBlock.norm only `if not post_norm or center_feature_scale`
            out.update({f"levels.{i}.norm.0.weight": (c,), f"levels.{i}.norm.0.bias": (c,)})
        if i < len(depths) - 1:  # DownsampleLayer: conv (no bias) -> [to_channels_last, LN]
            out[f"levels.{i}.downsample.conv.weight"] = (2 * c, c, 3, 3)
            out.update(
                {f"levels.{i}.downsample.norm.1.weight": (2 * c,), f"levels.{i}.downsample.norm.1.bias": (2 * c,)}
            )
    return {f"backbone.{k}": v for k, v in out.items()}


def official_neck_rpn(in_channels) -> dict[str, tuple[int, ...]]:
    """mmdet ``FPN(out_channels=256, num_outs=5)`` (ConvModule ``conv``, bias, no norm) and ``RPNHead`` (3 anchors,
    ``use_sigmoid=True``: one logit each)."""
    out: dict[str, tuple[int, ...]] = {}
    for i, c in enumerate(in_channels):
        out.update({f"neck.lateral_convs.{i}.conv.weight": (256, c, 1, 1), f"neck.lateral_convs.{i}.conv.bias": (256,)})
        out.update({f"neck.fpn_convs.{i}.conv.weight": (256, 256, 3, 3), f"neck.fpn_convs.{i}.conv.bias": (256,)})
    out.update({"rpn_head.rpn_conv.weight": (256, 256, 3, 3), "rpn_head.rpn_conv.bias": (256,)})
    out.update({"rpn_head.rpn_cls.weight": (3, 256, 1, 1), "rpn_head.rpn_cls.bias": (3,)})
    out.update({"rpn_head.rpn_reg.weight": (12, 256, 1, 1), "rpn_head.rpn_reg.bias": (12,)})
    return out


def official_fcn_mask_head(prefix: str) -> dict[str, tuple[int, ...]]:
    """``FCNMaskHead(num_convs=4, conv_out_channels=256, num_classes=80)``: deconv upsample, per-class logits."""
    out: dict[str, tuple[int, ...]] = {}
    for i in range(4):
        out.update({f"{prefix}convs.{i}.conv.weight": (256, 256, 3, 3), f"{prefix}convs.{i}.conv.bias": (256,)})
    out.update({prefix + "upsample.weight": (256, 256, 2, 2), prefix + "upsample.bias": (256,)})
    out.update({prefix + "conv_logits.weight": (80, 256, 1, 1), prefix + "conv_logits.bias": (80,)})
    return out


def official_mask_rcnn_heads() -> dict[str, tuple[int, ...]]:
    """``Shared2FCBBoxHead`` (1024 wide, class-specific: 4 x 80 reg rows) + ``FCNMaskHead``."""
    b = "roi_head.bbox_head."
    out = {
        b + "shared_fcs.0.weight": (1024, 256 * 49), b + "shared_fcs.0.bias": (1024,),
        b + "shared_fcs.1.weight": (1024, 1024), b + "shared_fcs.1.bias": (1024,),
        b + "fc_cls.weight": (81, 1024), b + "fc_cls.bias": (81,),
        b + "fc_reg.weight": (320, 1024), b + "fc_reg.bias": (320,),
    }  # fmt: skip
    out.update(official_fcn_mask_head("roi_head.mask_head."))
    return out


def official_cascade_heads() -> dict[str, tuple[int, ...]]:
    """3 x ``ConvFCBBoxHead(num_shared_convs=4, num_shared_fcs=1, norm_cfg=SyncBN, reg_class_agnostic=False)``
    + 3 x ``FCNMaskHead``."""
    out: dict[str, tuple[int, ...]] = {}
    for s in range(3):
        b = f"roi_head.bbox_head.{s}."
        for i in range(4):
            out[f"{b}shared_convs.{i}.conv.weight"] = (256, 256, 3, 3)  # bias='auto': none before a norm
            for name in ("weight", "bias", "running_mean", "running_var"):
                out[f"{b}shared_convs.{i}.bn.{name}"] = (256,)
            out[f"{b}shared_convs.{i}.bn.num_batches_tracked"] = ()
        out.update({b + "shared_fcs.0.weight": (1024, 256 * 49), b + "shared_fcs.0.bias": (1024,)})
        out.update({b + "fc_cls.weight": (81, 1024), b + "fc_cls.bias": (81,)})
        out.update({b + "fc_reg.weight": (320, 1024), b + "fc_reg.bias": (320,)})
        out.update(official_fcn_mask_head(f"roi_head.mask_head.{s}."))
    return out


def official_cascade_rcnn_2fc_heads(num_classes: int) -> dict[str, tuple[int, ...]]:
    """The CrowdHuman config's Cascade R-CNN: 3 x ``Shared2FCBBoxHead(reg_class_agnostic=True)``, no mask head
    (``detection/configs/crowd_human/cascade_internimage_xl_fpn_3x_crowd_human.py``)."""
    out: dict[str, tuple[int, ...]] = {}
    for s in range(3):
        b = f"roi_head.bbox_head.{s}."
        out.update({b + "shared_fcs.0.weight": (1024, 256 * 49), b + "shared_fcs.0.bias": (1024,)})
        out.update({b + "shared_fcs.1.weight": (1024, 1024), b + "shared_fcs.1.bias": (1024,)})
        out.update({b + "fc_cls.weight": (num_classes + 1, 1024), b + "fc_cls.bias": (num_classes + 1,)})
        out.update({b + "fc_reg.weight": (4, 1024), b + "fc_reg.bias": (4,)})
    return out


def official_checkpoint(arch: str, backbone: str, crowd_human: bool = False) -> dict[str, torch.Tensor]:
    """Every tensor of the official checkpoint, as zero-stride views (a full-size file takes a few kB)."""
    channels, depths, groups, post_norm = OFFICIAL_BACKBONES[backbone]
    shapes = official_backbone(channels, depths, groups, post_norm)
    shapes.update(official_neck_rpn([channels * 2**i for i in range(4)]))
    if crowd_human:
        shapes.update(official_cascade_rcnn_2fc_heads(1))
    else:
        shapes.update(official_mask_rcnn_heads() if arch == "mask_rcnn" else official_cascade_heads())
    sd = {}
    for k, shape in shapes.items():
        dtype = torch.int64 if k.endswith("num_batches_tracked") else torch.float32
        sd[k] = torch.zeros((), dtype=dtype).expand(shape)
    return sd


@pytest.mark.filterwarnings("ignore:.*meta parameter")
@pytest.mark.parametrize("preset", [p for p in list_presets() if not p.startswith("dino_")])  # DINO: test_dino.py
def test_official_checkpoint_layout_loads_strictly_for_every_preset(tmp_path, preset):
    cfg = get_preset(preset)
    backbone = cfg["model"].rsplit("_", 2)[0]  # internimage_l_22k_384 -> internimage_l
    crowd_human = "crowd_human" in preset
    sd = official_checkpoint(cfg["arch"], backbone, crowd_human)
    sd["ema_backbone_patch_embed_conv1_weight"] = torch.zeros(1)  # ExpMomentumEMAHook buffers: ignored
    torch.save({"meta": {"epoch": 36}, "state_dict": sd}, tmp_path / "official.pth")
    kwargs = dict(cfg.get("model_kwargs", {}))
    overrides = dict(layer_scale=cfg["layer_scale"], **kwargs.pop("backbone_overrides", {}))
    with torch.device("meta"):  # full size without memory; loading checks every name and shape
        model = build_detector(cfg["arch"], cfg["model"], cfg["num_classes"], backbone_overrides=overrides, **kwargs)
    result = load_detector_weights(model, tmp_path / "official.pth", strict=True)
    assert result.format == "mmdet" and result.ok
    n_official = sum(math.prod(s.shape) for k, s in sd.items() if not k.startswith("ema_"))
    n_ours = sum(v.numel() for v in model.state_dict().values())
    # torchvision's Mask R-CNN predictors carry background rows mmdet lacks (4 x 1025 box + 257 mask).
    assert n_ours - n_official == (4 * 1025 + 257 if cfg["arch"] == "mask_rcnn" else 0)


def test_official_cascade_layout_is_refused_by_a_class_agnostic_head(tmp_path):
    sd = official_checkpoint("cascade_mask_rcnn", "internimage_l")
    torch.save({"state_dict": sd}, tmp_path / "official.pth")
    with torch.device("meta"):
        model = build_detector(
            "cascade_mask_rcnn", "internimage_l_22k_384", 80, reg_class_agnostic=True,
            backbone_overrides=dict(layer_scale=1.0),
        )  # fmt: skip
    with pytest.raises(Exception, match="fc_reg"):
        load_detector_weights(model, tmp_path / "official.pth", strict=True)


# --------------------------------------------------------------------------------- mmdet formulas, float64
def ref_delta2bbox(rois, deltas, stds, max_shape=None, wh_ratio_clip=16 / 1000):
    """mmdet 2.28 ``delta2bbox`` (means 0), one box per 4 delta columns."""
    n, k = deltas.shape[0], deltas.shape[1] // 4
    d = deltas.reshape(-1, 4) * torch.tensor(stds, dtype=deltas.dtype)
    r = rois.repeat(1, k).reshape(-1, 4)
    pxy, pwh = (r[:, :2] + r[:, 2:]) * 0.5, r[:, 2:] - r[:, :2]
    max_ratio = abs(math.log(wh_ratio_clip))
    gxy = pxy + pwh * d[:, :2]
    gwh = pwh * d[:, 2:].clamp(min=-max_ratio, max=max_ratio).exp()
    boxes = torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], -1)
    if max_shape is not None:
        boxes[..., 0::2].clamp_(min=0, max=max_shape[1])
        boxes[..., 1::2].clamp_(min=0, max=max_shape[0])
    return boxes.reshape(n, -1)


def ref_bbox2delta(proposals, gt, stds):
    pxy, pwh = (proposals[:, :2] + proposals[:, 2:]) * 0.5, proposals[:, 2:] - proposals[:, :2]
    gxy, gwh = (gt[:, :2] + gt[:, 2:]) * 0.5, gt[:, 2:] - gt[:, :2]
    d = torch.cat([(gxy - pxy) / pwh, torch.log(gwh / pwh)], 1)
    return d / torch.tensor(stds, dtype=d.dtype)


def _random_boxes(n, size, gen):
    xy = torch.rand(n, 2, generator=gen, dtype=torch.float64) * size * 0.7
    wh = torch.rand(n, 2, generator=gen, dtype=torch.float64) * size * 0.5 + 1
    return torch.cat([xy, xy + wh], 1)


@pytest.mark.parametrize("stds", DEFAULT_STAGE_STDS + ((1.0, 1.0, 1.0, 1.0),))
def test_delta_coder_is_mmdet_delta2bbox(stds):
    gen = torch.Generator().manual_seed(0)
    rois = _random_boxes(50, 200, gen)
    deltas = torch.randn(50, 4 * 3, generator=gen, dtype=torch.float64) * 3  # 3 classes; large dw/dh both ways
    deltas[0, 2], deltas[1, 3] = -400.0, 400.0  # clamped below (torchvision clamps only above) and above
    coder = DeltaXYWHCoder(stds)
    torch.testing.assert_close(coder.decode_single(deltas, rois), ref_delta2bbox(rois, deltas, stds), rtol=0, atol=1e-9)
    clipped = coder.decode_single(deltas, rois, (120, 150))
    torch.testing.assert_close(clipped, ref_delta2bbox(rois, deltas, stds, (120, 150)), rtol=0, atol=1e-9)
    gt = _random_boxes(50, 200, gen)
    torch.testing.assert_close(coder.encode_single(gt, rois), ref_bbox2delta(rois, gt, stds), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="4 positive stds"):
        DeltaXYWHCoder((0.1, 0.1, 0.2))


def test_cascade_stages_use_the_official_stds():
    model = build_detector("cascade_mask_rcnn", "internimage_test_32", 3, fpn_channels=16, head_convs=0)
    assert [c.stds for c in model.roi_heads.coders] == [
        (0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067),
    ]  # fmt: skip
    assert model.rpn.box_coder.stds == (1.0, 1.0, 1.0, 1.0)


def ref_anchors(stride: int, feat_h: int, feat_w: int) -> torch.Tensor:
    """mmdet ``AnchorGenerator(scales=[8], ratios=[0.5, 1, 2], strides=[...])``, ``center_offset=0``, one level."""
    ratios = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    scales = torch.tensor([8.0], dtype=torch.float64)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = (stride * w_ratios[:, None] * scales[None, :]).view(-1)
    hs = (stride * h_ratios[:, None] * scales[None, :]).view(-1)
    base = torch.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], -1)
    anchors = []
    for y in range(feat_h):  # row-major positions, then the A base anchors
        for x in range(feat_w):
            anchors.append(base + torch.tensor([x * stride, y * stride] * 2, dtype=torch.float64))
    return torch.cat(anchors)


@pytest.mark.parametrize("image", [(800, 1088), (800, 1333)])
def test_anchor_grid_is_mmdet_at_coco_sizes(image):
    from torchvision.models.detection.image_list import ImageList
    from torchvision.models.detection.rpn import AnchorGenerator

    h, w = image
    ph, pw = math.ceil(h / 32) * 32, math.ceil(w / 32) * 32  # mmdet Pad(size_divisor=32)
    sizes = [(math.ceil(ph / s), math.ceil(pw / s)) for s in (4, 8, 16, 32)]
    sizes.append((math.ceil(sizes[-1][0] / 2), math.ceil(sizes[-1][1] / 2)))  # P6: max_pool2d(k=1, stride=2)
    feats = [torch.zeros(1, 1, fh, fw, dtype=torch.float64) for fh, fw in sizes]
    batch = ImageList(torch.zeros(1, 3, ph, pw, dtype=torch.float64), [(h, w)])
    model = build_detector("mask_rcnn", "internimage_test_32", 3, fpn_channels=16)
    assert isinstance(model.rpn.anchor_generator, MMDetAnchorGenerator)
    ours = model.rpn.anchor_generator(batch, feats)[0]
    ref = torch.cat([ref_anchors(s, fh, fw) for s, (fh, fw) in zip((4, 8, 16, 32, 64), sizes)])
    assert ours.dtype == torch.float64 and ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    # P6 centres at 0, 64, 128, ... in both directions.
    p6 = ours[-sizes[-1][0] * sizes[-1][1] * 3 :].view(sizes[-1][0], sizes[-1][1], 3, 4)
    centre_x = (p6[0, :, 1, 0] + p6[0, :, 1, 2]) / 2
    centre_y = (p6[:, 0, 1, 1] + p6[:, 0, 1, 3]) / 2
    assert centre_x.tolist() == [64.0 * i for i in range(sizes[-1][1])]
    assert centre_y.tolist() == [64.0 * i for i in range(sizes[-1][0])]
    # torchvision's generator (stride = padded size // map size, rounded base anchors) is off at P6.
    tv = AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)(batch, feats)[0]
    assert (tv - ours).abs().max() > 10


def ref_max_iou_assign(overlaps, pos_thr, neg_thr, min_pos, low_quality):
    """mmdet ``MaxIoUAssigner.assign_wrt_overlaps`` (0 = negative, -1 = ignored, i + 1 = gt i), loop form."""
    num_gts, num = overlaps.shape
    assigned = torch.full((num,), -1, dtype=torch.long)
    max_ov, argmax_ov = overlaps.max(0)
    gt_max, _ = overlaps.max(1)
    assigned[(max_ov >= 0) & (max_ov < neg_thr)] = 0
    pos = max_ov >= pos_thr
    assigned[pos] = argmax_ov[pos] + 1
    if low_quality:
        for i in range(num_gts):
            if gt_max[i] >= min_pos:
                assigned[overlaps[i, :] == gt_max[i]] = i + 1
    return assigned


@pytest.mark.parametrize("cfg", [(0.7, 0.3, 0.3, True), (0.5, 0.5, 0.5, True), (0.6, 0.6, 0.6, False)])
def test_matcher_is_mmdet_max_iou_assigner(cfg):
    gen = torch.Generator().manual_seed(1)
    for trial in range(20):
        iou = (torch.rand(4, 60, generator=gen) * 10).round() / 10  # many ties, as with duplicated proposals
        iou[1] = iou[0] if trial % 2 else iou[1]  # two gts with the same best predictions: the later one wins
        ref = ref_max_iou_assign(iou, *cfg)
        ours = MaxIoUMatcher(*cfg)(iou)
        expected = torch.where(ref > 0, ref - 1, torch.where(ref == 0, torch.tensor(-1), torch.tensor(-2)))
        assert torch.equal(ours, expected)


def _bilinear_zero_pad(img: torch.Tensor, ix: float, iy: float) -> float:
    """One bilinear sample of a (H, W) image at pixel coordinates (0 outside), as documented for grid_sample."""
    h, w = img.shape
    x0, y0 = math.floor(ix), math.floor(iy)
    val = 0.0
    for yy, wy in ((y0, 1 - (iy - y0)), (y0 + 1, iy - y0)):
        for xx, wx in ((x0, 1 - (ix - x0)), (x0 + 1, ix - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                val += wy * wx * float(img[yy, xx])
    return val


def ref_paste(mask: torch.Tensor, box, h: int, w: int) -> torch.Tensor:
    """``_do_paste_mask`` with ``skip_empty=True`` for one box, pixel by pixel."""
    x0, y0, x1, y1 = box
    m = mask.shape[-1]
    out = torch.zeros(h, w, dtype=torch.float64)
    xa, ya = max(math.floor(x0) - 1, 0), max(math.floor(y0) - 1, 0)
    xb, yb = min(math.ceil(x1) + 1, w), min(math.ceil(y1) + 1, h)
    for y in range(ya, yb):
        for x in range(xa, xb):
            # a zero-width box divides by 0: mmdet sets the infinite coordinates to 0 (the mask's centre)
            gx = (x + 0.5 - x0) / (x1 - x0) * 2 - 1 if x1 != x0 else 0.0
            gy = (y + 0.5 - y0) / (y1 - y0) * 2 - 1 if y1 != y0 else 0.0
            # align_corners=False: normalised -1..1 spans the outer edges of the M pixels
            out[y, x] = _bilinear_zero_pad(mask, ((gx + 1) * m - 1) / 2, ((gy + 1) * m - 1) / 2)
    return out


def test_paste_masks_is_mmdet_do_paste_mask():
    # Hand case: a 2x2 mask of ones in the box (0, 0, 4, 4) of a 6x6 image. Along each axis pixel centres sit at
    # mask coordinates -0.25, 0.25, 0.75, 1.25, 1.75, 2.25: weights 0.75, 1, 1, 0.75, 0.25, 0 (zero padding).
    ones = torch.ones(1, 1, 2, 2, dtype=torch.float64)
    got = paste_masks(ones, torch.tensor([[0.0, 0.0, 4.0, 4.0]], dtype=torch.float64), (6, 6))[0, 0]
    axis = torch.tensor([0.75, 1, 1, 0.75, 0.25, 0], dtype=torch.float64)
    torch.testing.assert_close(got, axis[:, None] * axis[None, :], rtol=0, atol=1e-12)
    assert ((got >= 0.5).sum(0) > 0).tolist() == [True] * 4 + [False] * 2  # mask_thr_binary 0.5, `>=`
    # Fractional boxes, a mask with structure, boxes reaching outside the image, a degenerate box.
    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(4, 1, 28, 28, generator=gen, dtype=torch.float64)
    boxes = [(3.3, 2.7, 17.9, 11.2), (-4.5, 5.0, 8.25, 30.0), (20.0, 1.0, 20.0, 9.0), (0.6, 0.2, 1.4, 1.1)]
    got = paste_masks(masks, torch.tensor(boxes, dtype=torch.float64), (24, 26))
    for i, box in enumerate(boxes):
        torch.testing.assert_close(got[i, 0], ref_paste(masks[i, 0], box, 24, 26), rtol=0, atol=1e-12)


def test_mask_targets_are_binarised_aligned_roi_align():
    gt = torch.zeros(2, 32, 32)
    gt[0, 8:24, 4:20] = 1  # a 16x16 square
    gt[1, :, 16:] = 1  # the right half
    rois = torch.tensor([[4.0, 8.0, 20.0, 24.0], [8.0, 0.0, 24.0, 32.0]])
    t = mask_targets(gt, rois, torch.tensor([0, 1]), 4)
    assert torch.equal(t[0], torch.ones(4, 4))  # the RoI is the square
    assert torch.equal(t[1], torch.tensor([[0.0, 0, 1, 1]] * 4))  # half of the RoI is in the right half


# --------------------------------------------------------------------------------- Cascade test-time path
K = 2  # foreground classes
IMAGE = (100, 100)


class BoxFeatures(nn.Module):
    """Stands in for RoIAlign: the feature of a RoI is its box / 100, so refined boxes change what heads see."""

    def __init__(self, size: int = 1) -> None:
        super().__init__()
        self.size = size

    def forward(self, features, boxes, image_shapes):
        b = torch.cat(boxes) / 100
        return b[:, :, None, None].expand(-1, -1, self.size, self.size).contiguous()


def _hand_cascade() -> CascadeRoIHeads:
    """3 stages, class scores decided by x1 (class 1 on the left, class 2 on the right) with per-stage tilts;
    class 1 moves boxes right, class 2 moves them down and widens them."""
    heads = []
    for s in range(3):
        h = ConvFCBoxHead(4, 1, K, num_convs=0, num_fcs=0, norm=False).double()
        with torch.no_grad():
            h.fc_cls.weight.zero_()
            h.fc_cls.weight[1, 0], h.fc_cls.weight[2, 0] = -10.0 + s, 10.0 - 2 * s
            h.fc_cls.bias.copy_(torch.tensor([0.0, 2.0 + 0.3 * s, -2.0]))
            h.fc_reg.weight.zero_()
            h.fc_reg.weight[4 + 2, 0] = 1.0  # class 2's dw grows with x1
            h.fc_reg.bias.copy_(torch.tensor([0.5, 0.0, 0.0, 0.0, 0.0, 0.5, 0.3, -0.2]) * (s + 1))
        heads.append(h)
    masks = [FCNMaskHead(4, K, num_convs=0, channels=2).double() for _ in range(3)]
    roi = CascadeRoIHeads(BoxFeatures(1), BoxFeatures(2), heads, masks, score_thresh=0.05, detections_per_img=100)
    return roi.eval()


def ref_nms(boxes, scores, thr):
    order = scores.argsort(descending=True).tolist()
    keep = []
    while order:
        i = order.pop(0)
        keep.append(i)
        rest = []
        for j in order:
            xx1, yy1 = max(boxes[i, 0], boxes[j, 0]), max(boxes[i, 1], boxes[j, 1])
            xx2, yy2 = min(boxes[i, 2], boxes[j, 2]), min(boxes[i, 3], boxes[j, 3])
            inter = max(xx2 - xx1, 0) * max(yy2 - yy1, 0)
            area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
            if inter / (area(boxes[i]) + area(boxes[j]) - inter) <= thr:
                rest.append(j)
        order = rest
    return keep


def ref_cascade_simple_test(roi: CascadeRoIHeads, proposals: torch.Tensor):
    """mmdet ``CascadeRoIHead.simple_test`` for one image, in mmdet's class order (background LAST)."""

    def head(s, rois):  # fc_cls / fc_reg of the hand heads, written out; mmdet order: move background last
        x = (rois / 100).double()
        h = roi.box_heads[s]
        logits = x @ h.fc_cls.weight.T + h.fc_cls.bias
        return torch.cat([logits[:, 1:], logits[:, :1]], 1), x @ h.fc_reg.weight.T + h.fc_reg.bias

    rois, ms_scores = proposals, []
    for s in range(3):
        cls_score, bbox_pred = head(s, rois)
        ms_scores.append(cls_score)
        if s < 2:  # regress_by_class with cls_score[:, :-1].argmax(1)
            label = cls_score[:, :-1].argmax(1) * 4
            picked = torch.gather(bbox_pred, 1, torch.stack([label, label + 1, label + 2, label + 3], 1))
            rois = ref_delta2bbox(rois, picked, DEFAULT_STAGE_STDS[s], IMAGE)
    scores = torch.softmax(sum(ms_scores) / 3.0, -1)
    boxes = ref_delta2bbox(rois, bbox_pred, DEFAULT_STAGE_STDS[2], IMAGE).view(len(rois), K, 4)
    dets = []
    for c in range(K):  # multiclass_nms: score > 0.05, NMS 0.5 per class, best 100
        idx = torch.where(scores[:, c] > 0.05)[0]
        for i in ref_nms(boxes[idx, c], scores[idx, c], 0.5):
            dets.append((float(scores[idx[i], c]), c + 1, boxes[idx[i], c]))
    dets.sort(key=lambda d: -d[0])
    return dets[:100]


def test_cascade_test_path_is_mmdet_simple_test():
    torch.manual_seed(0)
    roi = _hand_cascade()
    proposals = torch.tensor(
        [[10.0, 10, 30, 30], [12, 9, 31, 33], [50, 50, 80, 90], [60, 5, 95, 40], [35, 40, 55, 60]],
        dtype=torch.float64,
    )
    with torch.no_grad():
        det = roi({}, [proposals], [IMAGE])[0][0]
        ref = ref_cascade_simple_test(roi, proposals)
    assert len(det["boxes"]) == len(ref) > 0
    torch.testing.assert_close(det["scores"], torch.tensor([d[0] for d in ref], dtype=torch.float64))
    assert det["labels"].tolist() == [d[1] for d in ref]
    torch.testing.assert_close(det["boxes"], torch.stack([d[2] for d in ref]), rtol=0, atol=1e-9)
    # Class-specific boxes: the same proposal gives different boxes for its two classes ...
    assert set(det["labels"].tolist()) == {1, 2}
    # ... and class-agnostic refinement (one set of deltas for every RoI, here class 1's) moves them elsewhere.
    agnostic = _hand_cascade()
    for h in agnostic.box_heads:
        with torch.no_grad():
            h.fc_reg.weight.copy_(h.fc_reg.weight[:4].repeat(K, 1))
            h.fc_reg.bias.copy_(h.fc_reg.bias[:4].repeat(K))
    with torch.no_grad():
        other = agnostic({}, [proposals], [IMAGE])[0][0]
    assert len(other["boxes"]) != len(det["boxes"]) or (other["boxes"] - det["boxes"]).abs().max() > 1.0
    # Masks: the mean of the three heads' sigmoids, the detected class's map.
    feats = BoxFeatures(2)({}, [det["boxes"]], [IMAGE])
    with torch.no_grad():
        want = torch.stack([m(feats).sigmoid() for m in roi.mask_heads]).mean(0)
    want = want[torch.arange(len(det["labels"])), det["labels"] - 1][:, None]
    torch.testing.assert_close(det["masks"], want)


def ref_giou_loss(pred, target):
    """mmdet ``giou_loss`` (per box, no reduction)."""
    lt, rb = torch.max(pred[:, :2], target[:, :2]), torch.min(pred[:, 2:], target[:, 2:])
    overlap = (rb - lt).clamp(min=0).prod(1)
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # noqa: E731
    union = area(pred) + area(target) - overlap
    enclose = (torch.max(pred[:, 2:], target[:, 2:]) - torch.min(pred[:, :2], target[:, :2])).clamp(min=0).prod(1)
    return 1 - (overlap / union - (enclose - union) / enclose)


def test_cascade_training_regresses_the_gt_class():
    # Stage 0 samples the 2 proposals plus the 2 gts (add_gt_as_proposals), all positive: the GIoU loss (weight 10,
    # over the 4 sampled RoIs) reads the decoded deltas of each RoI's gt class (BBoxHead.loss).
    roi = _hand_cascade().train()
    proposals = torch.tensor([[10.0, 10, 30, 30], [50, 50, 80, 90]], dtype=torch.float64)
    gt = torch.tensor([[11.0, 10, 31, 31], [52, 50, 82, 88]], dtype=torch.float64)
    target = {"boxes": gt, "labels": torch.tensor([1, 2]), "masks": torch.zeros(2, 100, 100, dtype=torch.uint8)}
    loss = roi({}, [proposals], [IMAGE], [target])[1]["s0.loss_box"].detach()
    rois = torch.cat([proposals, gt])
    h = roi.box_heads[0]
    deltas = (rois / 100) @ h.fc_reg.weight.detach().T + h.fc_reg.bias.detach()
    labels = torch.tensor([1, 2, 1, 2])

    def expected(cls):
        picked = torch.stack([deltas[i, 4 * (c - 1) : 4 * c] for i, c in enumerate(cls)])
        return ref_giou_loss(ref_delta2bbox(rois, picked, DEFAULT_STAGE_STDS[0]), gt[labels - 1]).sum() * 10 / 4

    torch.testing.assert_close(loss, expected(labels), rtol=1e-6, atol=1e-6)
    assert abs(float(expected(torch.ones(4, dtype=torch.long))) - float(loss)) > 1e-2  # class 1 for all differs


# --------------------------------------------------------------------------------- Mask R-CNN training rules
def test_mask_rcnn_box_loss_is_l1_on_the_gt_class_deltas():
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

    from internimage.detection.models.roi_heads import MMDetRoIHeads

    torch.manual_seed(0)
    predictor = FastRCNNPredictor(4, K + 1).double()
    heads = MMDetRoIHeads(BoxFeatures(1), nn.Flatten(), predictor, 0.5, 0.5, 512, 0.25, None, 0.05, 0.5, 100).train()
    proposals = torch.tensor([[10.0, 10, 30, 30], [50, 50, 80, 90], [0, 60, 20, 99]], dtype=torch.float64)
    gt = torch.tensor([[11.0, 10, 31, 31], [52, 50, 82, 88]], dtype=torch.float64)
    target = {"boxes": gt, "labels": torch.tensor([2, 1])}
    loss = heads({}, [proposals], [IMAGE], [target])[1]["loss_box_reg"].detach()
    # Sampled: 3 proposals + 2 gts (gt first or last does not change the sums); the third proposal is negative.
    rois = torch.cat([proposals[:2], gt])
    labels = torch.tensor([2, 1, 2, 1])
    with torch.no_grad():
        deltas = predictor.bbox_pred(rois / 100)  # torchvision layout: 4 columns per class, background first
    pred = torch.stack([deltas[i, 4 * c : 4 * c + 4] for i, c in enumerate(labels)])
    target_deltas = ref_bbox2delta(rois, gt[[0, 1, 0, 1]], (0.1, 0.1, 0.2, 0.2))
    torch.testing.assert_close(loss, (pred - target_deltas).abs().sum() / 5)  # L1, over the 5 sampled RoIs
    smooth = torch.nn.functional.smooth_l1_loss(pred, target_deltas, beta=1 / 9, reduction="sum") / 5
    assert abs(float(smooth) - float(loss)) > 1e-3  # torchvision's loss would differ


def test_rpn_losses_follow_the_configs():
    mask_rcnn = build_detector("mask_rcnn", "internimage_test_32", 3, fpn_channels=16)
    cascade = build_detector("cascade_mask_rcnn", "internimage_test_32", 3, fpn_channels=16, head_convs=0)
    assert (mask_rcnn.rpn.box_loss, mask_rcnn.rpn.allowed_border) == ("l1", -1)  # mask_rcnn_r50_fpn
    assert (cascade.rpn.box_loss, cascade.rpn.allowed_border) == ("smooth_l1", 0)  # cascade_mask_rcnn_r50_fpn
    torch.manual_seed(0)
    labels = [torch.tensor([1.0, 0, 0, -1, 1, 0])]
    deltas, targets = torch.randn(6, 4), [torch.randn(6, 4)]
    obj = torch.randn(6, 1)
    cls, box = mask_rcnn.rpn.compute_loss(obj, deltas, labels, targets)
    pos, sampled = torch.tensor([0, 4]), torch.tensor([0, 1, 2, 4, 5])
    torch.testing.assert_close(box, (deltas[pos] - targets[0][pos]).abs().sum() / 5)
    want = torch.nn.functional.binary_cross_entropy_with_logits(obj[sampled, 0], labels[0][sampled])
    torch.testing.assert_close(cls, want)


def ref_valid_flags(sizes, strides, image, allowed_border):
    """mmdet ``AnchorGenerator.valid_flags`` (this image's ``pad_shape``) & ``anchor_inside_flags`` (``img_shape``)."""
    h, w = image
    ph, pw = math.ceil(h / 32) * 32, math.ceil(w / 32) * 32
    flags = []
    for (fh, fw), s in zip(sizes, strides):
        vh, vw = min(math.ceil(ph / s), fh), min(math.ceil(pw / s), fw)
        grid = torch.zeros(fh, fw, dtype=torch.bool)
        grid[:vh, :vw] = True
        flags.append(grid.reshape(-1)[:, None].expand(-1, 3).reshape(-1))
    valid = torch.cat(flags)
    anchors = torch.cat([ref_anchors(s, fh, fw) for s, (fh, fw) in zip(strides, sizes)])
    if allowed_border >= 0:
        b = allowed_border
        valid &= (anchors[:, 0] >= -b) & (anchors[:, 1] >= -b) & (anchors[:, 2] < w + b) & (anchors[:, 3] < h + b)
    return anchors, valid


@pytest.mark.parametrize("arch", ["mask_rcnn", "cascade_mask_rcnn"])
def test_rpn_assigns_only_mmdet_valid_anchors(arch):
    from torchvision.models.detection.image_list import ImageList
    from torchvision.ops import box_iou

    extra = dict(head_convs=0) if arch == "cascade_mask_rcnn" else {}
    model = build_detector(arch, "internimage_test_32", 3, fpn_channels=16, **extra)
    rpn = model.rpn.double()
    strides = (4, 8, 16, 32, 64)
    sizes = [(32, 40), (16, 20), (8, 10), (4, 5), (2, 3)]  # a batch padded to 128 x 160
    image = (100, 90)  # this image pads to 128 x 96: columns past 96 are batch padding
    feats = {str(i): torch.zeros(1, 16, fh, fw, dtype=torch.float64) for i, (fh, fw) in enumerate(sizes)}
    rpn._map_sizes, rpn._image_sizes = sizes, [image]
    anchors = rpn.anchor_generator(ImageList(torch.zeros(1, 3, 128, 160), [image]), list(feats.values()))
    ref_a, ref_valid = ref_valid_flags(sizes, strides, image, rpn.allowed_border)
    torch.testing.assert_close(anchors[0], ref_a)
    assert torch.equal(rpn.valid_anchors(anchors[0], image), ref_valid)
    # A gt at the border: its best anchor overall may be invalid; mmdet matches among the valid ones only.
    gt = torch.tensor([[0.0, 40, 30, 100], [60, 2, 90, 50]], dtype=torch.float64)
    labels, matched = rpn.assign_targets_to_anchors(anchors, [{"boxes": gt}])
    ref = torch.full((len(ref_a),), -1.0, dtype=torch.float64)  # -1: not used
    assigned = ref_max_iou_assign(box_iou(gt, ref_a[ref_valid]), 0.7, 0.3, 0.3, True)
    ref[ref_valid] = torch.where(assigned > 0, 1.0, torch.where(assigned == 0, 0.0, -1.0)).double()
    assert torch.equal(labels[0], ref) and (labels[0] == 1).any()
    pos = labels[0] == 1
    torch.testing.assert_close(matched[0][pos], gt[assigned[assigned > 0] - 1])
    assert isinstance(rpn.box_coder, DeltaXYWHCoder)  # stds 1, mmdet's RPN bbox_coder


# --------------------------------------------------------------------------------- export loading
def test_export_loads_official_mmdet_weights(tmp_path):
    from internimage import create_model
    from internimage.export import build_exportable

    sd = {f"backbone.{k}": v for k, v in create_model("internimage_test_32", layer_scale=1.0).state_dict().items()
          if k.startswith(("patch_embed.", "levels."))}  # fmt: skip
    shapes = official_neck_rpn([16, 32, 64, 128])
    shapes.update(official_mask_rcnn_heads())
    sd.update({k: torch.full((), 0.25).expand(s) for k, s in shapes.items()})
    torch.save({"state_dict": sd}, tmp_path / "official.pth")
    model = build_exportable("detection", "internimage_test_32", str(tmp_path / "official.pth"))
    fc6 = model.full_model.roi_heads.box_head.fc6.weight
    assert fc6.shape == (1024, 256 * 49) and bool((fc6 == 0.25).all())
    sd.pop("roi_head.bbox_head.fc_reg.bias")
    torch.save({"state_dict": sd}, tmp_path / "partial.pth")
    with pytest.raises(Exception, match="missing"):
        build_exportable("detection", "internimage_test_32", str(tmp_path / "partial.pth"))


@pytest.mark.parametrize("arch", ["mask_rcnn", "cascade_mask_rcnn"])
def test_heads_accept_images_without_proposals(arch):
    extra = dict(head_convs=0) if arch == "cascade_mask_rcnn" else {}
    model = build_detector(arch, "internimage_test_32", 3, fpn_channels=16, mask_channels=8, **extra).eval()
    feats = {str(i): torch.randn(2, 16, 64 // 2**i, 64 // 2**i) for i in range(4)}
    proposals = [torch.zeros(0, 4), torch.tensor([[4.0, 4, 40, 40]])]
    with torch.no_grad():
        dets, _ = model.roi_heads(feats, proposals, [(256, 256)] * 2)
    assert len(dets[0]["boxes"]) == 0 and dets[0]["masks"].shape[0] == 0
    assert dets[1]["boxes"].shape[1] == 4 and dets[1]["masks"].shape[1:] == (1, 28, 28)
    assert DeltaXYWHCoder().decode_single(torch.zeros(0, 12), torch.zeros(0, 4)).shape == (0, 12)


def test_class_agnostic_checkpoints_load_as_the_same_class_specific_head(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    kwargs = dict(fpn_channels=16, head_convs=0, mask_channels=8)
    agnostic = build_detector("cascade_mask_rcnn", "internimage_test_32", 3, reg_class_agnostic=True, **kwargs).eval()
    save_file({k: v.contiguous() for k, v in agnostic.state_dict().items()}, str(tmp_path / "old.safetensors"))
    specific = build_detector("cascade_mask_rcnn", "internimage_test_32", 3, **kwargs).eval()
    assert load_detector_weights(specific, tmp_path / "old.safetensors").format == "ours"
    feats = {str(i): torch.randn(1, 16, 64 // 2**i, 64 // 2**i) for i in range(4)}
    proposals = [torch.tensor([[4.0, 4, 40, 40], [100, 30, 200, 160], [10, 120, 90, 250]])]
    with torch.no_grad():
        want = agnostic.roi_heads(feats, proposals, [(256, 256)])[0][0]
        got = specific.roi_heads(feats, proposals, [(256, 256)])[0][0]
    assert len(want["boxes"]) > 0
    for key in ("boxes", "scores", "labels", "masks"):
        torch.testing.assert_close(got[key], want[key])


def test_mask_rcnn_test_path_is_mmdet_get_bboxes():
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

    from internimage.detection.models.roi_heads import MMDetRoIHeads

    torch.manual_seed(0)
    predictor = FastRCNNPredictor(4, K + 1).double()
    with torch.no_grad():  # class 1 on the left, class 2 on the right; random per-class regression
        predictor.cls_score.weight.zero_()
        predictor.cls_score.weight[1, 0], predictor.cls_score.weight[2, 0] = -10.0, 10.0
        predictor.cls_score.bias.copy_(torch.tensor([0.0, 2.0, -2.0]))
        predictor.bbox_pred.weight.mul_(20)
    mask_predictor = MaskRCNNPredictor(4, 2, K + 1).double()
    heads = MMDetRoIHeads(
        BoxFeatures(1), nn.Flatten(), predictor, 0.5, 0.5, 512, 0.25, None, 0.05, 0.5, 100,
        BoxFeatures(2), nn.Identity(), mask_predictor,
    ).eval()  # fmt: skip
    proposals = torch.tensor(
        [[10.0, 10, 30, 30], [12, 9, 31, 33], [50, 50, 80, 90], [60, 5, 99, 40], [35, 40, 55, 60], [0, 0, 99, 99]],
        dtype=torch.float64,
    )
    with torch.no_grad():
        det = heads({}, [proposals], [IMAGE])[0][0]
        x = proposals / 100
        logits = predictor.cls_score(x)
        scores = torch.softmax(torch.cat([logits[:, 1:], logits[:, :1]], 1), -1)  # mmdet order: background last
        deltas = predictor.bbox_pred(x)[:, 4:]  # mmdet's fc_reg: foreground classes only
        boxes = ref_delta2bbox(proposals, deltas, (0.1, 0.1, 0.2, 0.2), IMAGE).view(len(proposals), K, 4)
    ref = []
    for c in range(K):
        idx = torch.where(scores[:, c] > 0.05)[0]
        ref += [
            (float(scores[idx[i], c]), c + 1, boxes[idx[i], c]) for i in ref_nms(boxes[idx, c], scores[idx, c], 0.5)
        ]
    ref.sort(key=lambda d: -d[0])
    assert len(det["boxes"]) == len(ref) > 2 and set(det["labels"].tolist()) == {1, 2}
    torch.testing.assert_close(det["scores"], torch.tensor([d[0] for d in ref], dtype=torch.float64))
    assert det["labels"].tolist() == [d[1] for d in ref]
    torch.testing.assert_close(det["boxes"], torch.stack([d[2] for d in ref]), rtol=0, atol=1e-9)
    with torch.no_grad():
        want = mask_predictor(BoxFeatures(2)({}, [det["boxes"]], [IMAGE])).sigmoid()
    torch.testing.assert_close(det["masks"][:, 0], want[torch.arange(len(det["labels"])), det["labels"]])


def test_rpn_drops_only_empty_proposals():
    # mmdet RPNHead._bbox_post_process with min_bbox_size=0: keep w > 0 and h > 0, NMS 0.7 per level.
    model = build_detector("mask_rcnn", "internimage_test_32", 3, fpn_channels=16).eval()
    proposals = torch.tensor([[[10.0, 10, 10.0005, 30], [40, 40, 40, 60], [50, 50, 70, 70]]])
    objectness = torch.tensor([[3.0, 2.0, 1.0]])
    boxes, _ = model.rpn.filter_proposals(proposals, objectness, [(100, 100)], [3])
    assert torch.equal(boxes[0], proposals[0, [0, 2]])  # the 5e-4 px wide one stays (torchvision drops < 1e-3)
