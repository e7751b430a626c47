"""BEVFormer-Occ on mmdet's ResNet-DCN (``bevformer_base_occ`` / ``bevformer_small_occ``): official checkpoint
layouts, the modulated deformable conv against a hand-written float64 reference, frozen parts, weights, training.

Expected layouts and counts are written from the official configs and the mmdet / mmcv module definitions, never
read back from the modules under test.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from internimage.engine.optim import param_groups
from internimage.occupancy import OccupancyConfig
from internimage.occupancy.models.bevformer_occ import build_bevformer_occ_tiny
from internimage.occupancy.models.resnet import (
    OFFICIAL_RESNET_OVERRIDES,
    ModulatedDeformConv2dPack,
    ResNet,
    build_resnet,
)
from internimage.occupancy.task import build_occupancy_model


# --------------------------------------------------------------------------------------------------------- layout
def _bn(s: dict, p: str, c: int) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        s[f"{p}.{name}"] = (c,)
    s[f"{p}.num_batches_tracked"] = ()


def _resnet_layout(blocks: tuple[int, ...], dcn: tuple[bool, ...]) -> dict[str, tuple[int, ...]]:
    """mmdet v2 ``ResNet`` (Bottleneck, expansion 4, stem 7x7 64, no deep stem / avg-down, BN2d) with mmcv
    ``ModulatedDeformConv2dPack`` as conv2 where ``dcn`` says (no bias; ``conv_offset`` 3 x 1 group x 3 x 3 = 27
    outputs with bias)."""
    s: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7)}
    _bn(s, "bn1", 64)
    inplanes = 64
    for i, n in enumerate(blocks):
        planes = 64 * 2**i
        for b in range(n):
            p = f"layer{i + 1}.{b}"
            s[f"{p}.conv1.weight"] = (planes, inplanes if b == 0 else 4 * planes, 1, 1)
            _bn(s, f"{p}.bn1", planes)
            s[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            if dcn[i]:
                s[f"{p}.conv2.conv_offset.weight"] = (27, planes, 3, 3)
                s[f"{p}.conv2.conv_offset.bias"] = (27,)
            _bn(s, f"{p}.bn2", planes)
            s[f"{p}.conv3.weight"] = (4 * planes, planes, 1, 1)
            _bn(s, f"{p}.bn3", 4 * planes)
            if b == 0:
                s[f"{p}.downsample.0.weight"] = (4 * planes, inplanes, 1, 1)
                _bn(s, f"{p}.downsample.1", 4 * planes)
        inplanes = 4 * planes
    return s


def _occ_layout(
    blocks: tuple[int, ...], fpn_in: tuple[int, ...], num_outs: int, num_layers: int, num_levels: int
) -> dict[str, tuple[int, ...]]:
    """Key -> shape of an official ResNet BEVFormer-Occ checkpoint (``bevformer_base_occ`` / ``small_occ``).

    FPN ``in_channels -> 256`` with ``num_outs`` outputs (extra ones 3x3 stride 2); encoder of ``num_layers``
    BEVFormerLayers (TSA: 8 heads, 1 level, 4 points, 2 BEVs -> 128 offsets / 64 weights from 512; SCA: 8 heads,
    ``num_levels`` levels, 8 points -> 128 * L offsets / 64 * L weights), FFN 256 -> 512 -> 256, 3 LNs; 3D decoder
    16 -> 32 -> 32; predicter 32 -> 64 -> 18; ``level_embeds`` (4, 256): TransformerOcc's default
    ``num_feature_levels=4``, which the configs never set.
    """
    s = {f"img_backbone.{k}": v for k, v in _resnet_layout(blocks, (False, False, True, True)).items()}
    for i, cin in enumerate(fpn_in):
        s[f"img_neck.lateral_convs.{i}.conv.weight"] = (256, cin, 1, 1)
        s[f"img_neck.lateral_convs.{i}.conv.bias"] = (256,)
    for i in range(num_outs):
        s[f"img_neck.fpn_convs.{i}.conv.weight"] = (256, 256, 3, 3)
        s[f"img_neck.fpn_convs.{i}.conv.bias"] = (256,)
    t = "pts_bbox_head.transformer."
    for layer in range(num_layers):
        p = f"{t}encoder.layers.{layer}."
        linears = {
            "attentions.0.sampling_offsets": (128, 512),
            "attentions.0.attention_weights": (64, 512),
            "attentions.0.value_proj": (256, 256),
            "attentions.0.output_proj": (256, 256),
            "attentions.1.deformable_attention.sampling_offsets": (128 * num_levels, 256),
            "attentions.1.deformable_attention.attention_weights": (64 * num_levels, 256),
            "attentions.1.deformable_attention.value_proj": (256, 256),
            "attentions.1.output_proj": (256, 256),
            "ffns.0.layers.0.0": (512, 256),
            "ffns.0.layers.1": (256, 512),
        }
        for name, shape in linears.items():
            s[p + name + ".weight"] = shape
            s[p + name + ".bias"] = (shape[0],)
        for j in range(3):
            s[f"{p}norms.{j}.weight"] = (256,)
            s[f"{p}norms.{j}.bias"] = (256,)
    for i, (cin, cout) in enumerate(((16, 32), (32, 32))):
        s[f"{t}decoder.{i}.conv.weight"] = (cout, cin, 3, 3, 3)
        _bn(s, f"{t}decoder.{i}.bn", cout)
    s |= {
        t + "predicter.0.weight": (64, 32),
        t + "predicter.0.bias": (64,),
        t + "predicter.2.weight": (18, 64),
        t + "predicter.2.bias": (18,),
        t + "level_embeds": (4, 256),
        t + "cams_embeds": (6, 256),
        t + "can_bus_mlp.0.weight": (128, 18),
        t + "can_bus_mlp.0.bias": (128,),
        t + "can_bus_mlp.2.weight": (256, 128),
        t + "can_bus_mlp.2.bias": (256,),
        t + "can_bus_mlp.norm.weight": (256,),
        t + "can_bus_mlp.norm.bias": (256,),
        "pts_bbox_head.bev_embedding.weight": (40000, 256),
        "pts_bbox_head.positional_encoding.row_embed.weight": (200, 128),
        "pts_bbox_head.positional_encoding.col_embed.weight": (200, 128),
    }
    return s


_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _params(layout: dict[str, tuple[int, ...]], prefix: str = "") -> int:
    return sum(math.prod(v) for k, v in layout.items() if k.startswith(prefix) and not k.endswith(_BUFFERS))


@pytest.mark.parametrize(
    "preset, blocks, fpn_in, num_outs, num_layers, num_levels, resnet_params, total",
    [
        # torchvision's resnet101 has 44,549,160 parameters, its fc 2048 * 1000 + 1000; mmdet's has no fc.
        ("bevformer_base_occ", (3, 4, 23, 3), (512, 1024, 2048), 4, 4, 4, 44_549_160 - 2_049_000, 61_252_048),
        ("bevformer_small_occ", (3, 4, 6, 3), (1024, 2048), 2, 1, 2, 25_557_032 - 2_049_000, 37_321_285),
    ],
)
def test_official_checkpoint_layout_loads_strictly(
    preset, blocks, fpn_in, num_outs, num_layers, num_levels, resnet_params, total
):
    cfg = OccupancyConfig.from_preset(preset)
    with torch.device("meta"):
        model = build_occupancy_model(cfg, load_pretrained=False)
    official = _occ_layout(blocks, fpn_in, num_outs, num_layers, num_levels)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(ours) - set(official)) == []
    assert sorted(set(official) - set(ours)) == []
    assert ours == official
    state = {
        k: torch.empty(shape, device="meta", dtype=torch.long if k.endswith("num_batches_tracked") else torch.float32)
        for k, shape in official.items()
    }
    result = model.load_state_dict(state, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys
    # DCN adds a 27-channel 3x3 offset conv (with bias) to every block of stages 3 and 4 (width 256 and 512).
    dcn = blocks[2] * 27 * (256 * 9 + 1) + blocks[3] * 27 * (512 * 9 + 1)
    assert _params(official, "img_backbone.") == resnet_params + dcn
    assert sum(p.numel() for p in model.img_backbone.parameters()) == resnet_params + dcn
    assert sum(p.numel() for p in model.parameters()) == _params(official) == total


def test_presets_carry_the_official_recipe():
    base = OccupancyConfig.from_preset("bevformer_base_occ")
    small = OccupancyConfig.from_preset("bevformer_small_occ")
    for cfg in (base, small):
        assert (cfg.img_mean, cfg.img_std, cfg.to_rgb) == ((103.53, 116.28, 123.675), (1.0, 1.0, 1.0), False)
        assert (cfg.lr, cfg.weight_decay, cfg.backbone_lr_mult, cfg.clip_grad) == (2e-4, 0.01, 0.1, 35.0)
        assert (cfg.layer_decay, cfg.layer_decay_rule, cfg.epochs, cfg.queue_length) == (1.0, "mmcv_default", 24, 4)
        assert cfg.backbone_overrides["style"] == "caffe" and cfg.backbone_overrides["frozen_stages"] == 1
    assert (base.model, base.image_scale, base.model_kwargs["num_layers"]) == ("resnet101", 1.0, 4)
    assert (small.model, small.image_scale, small.model_kwargs["num_layers"]) == ("resnet50", 0.8, 1)
    assert (base.train_image_scale, small.train_image_scale) == (0.0, 0.2)  # small: trains at 0.2, tests at 0.8
    assert list(small.model_kwargs["backbone_indices"]) == [2, 3] and small.model_kwargs["num_levels"] == 2


# ------------------------------------------------------------------------------------------------ deformable conv
def _bilinear(img: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """mmcv's ``dmcn_im2col_bilinear``: (C, H, W) at (y, x); 0 unless -1 < y < H and -1 < x < W, and each corner
    outside the image reads 0."""
    _, h, w = img.shape
    if not (-1 < y < h and -1 < x < w):
        return img.new_zeros(img.shape[0])
    y0, x0 = math.floor(y), math.floor(x)
    ly, lx = y - y0, x - x0
    out = img.new_zeros(img.shape[0])
    for yy, xx, wt in ((y0, x0, (1 - ly) * (1 - lx)), (y0, x0 + 1, (1 - ly) * lx),
                       (y0 + 1, x0, ly * (1 - lx)), (y0 + 1, x0 + 1, ly * lx)):  # fmt: skip
        if 0 <= yy < h and 0 <= xx < w:
            out = out + wt * img[:, yy, xx]
    return out


def _mmcv_reference(x: torch.Tensor, m: ModulatedDeformConv2dPack) -> torch.Tensor:
    """mmcv ``ModulatedDeformConv2dPack.forward`` + ``modulated_deformable_im2col`` written out in float64 loops.

    ``o1, o2, mask = chunk(conv_offset(x), 3)``; ``offset = cat(o1, o2)``; ``mask = sigmoid(mask)``. Within deform
    group g, offset channel ``g * 2K + 2k`` is the row shift and ``g * 2K + 2k + 1`` the column shift of kernel
    point ``k = i * kw + j``; mask channel ``g * K + k``.
    """
    raw = F.conv2d(x, m.conv_offset.weight, m.conv_offset.bias, m.stride, m.padding, m.dilation)
    o1, o2, mk = torch.chunk(raw, 3, dim=1)
    offset, mask = torch.cat((o1, o2), 1), torch.sigmoid(mk)
    n, cin, h, w = x.shape
    cout, _, kh, kw = m.weight.shape
    kk, dg = kh * kw, m.deform_groups
    cpg = cin // dg
    ho, wo = offset.shape[-2:]
    out = x.new_zeros(n, cout, ho, wo)
    for b in range(n):
        for oy in range(ho):
            for ox in range(wo):
                cols = x.new_zeros(cin, kk)
                for g in range(dg):
                    for i in range(kh):
                        for j in range(kw):
                            k = i * kw + j
                            dy = float(offset[b, g * 2 * kk + 2 * k, oy, ox])
                            dx = float(offset[b, g * 2 * kk + 2 * k + 1, oy, ox])
                            y = oy * m.stride - m.padding + i * m.dilation + dy
                            xx = ox * m.stride - m.padding + j * m.dilation + dx
                            val = _bilinear(x[b, g * cpg : (g + 1) * cpg], y, xx)
                            cols[g * cpg : (g + 1) * cpg, k] = val * mask[b, g * kk + k, oy, ox]
                out[b, :, oy, ox] = (m.weight.reshape(cout, cin, kk) * cols).sum((1, 2))
                if m.bias is not None:
                    out[b, :, oy, ox] += m.bias
    return out


@pytest.mark.parametrize(
    "stride, padding, dilation, deform_groups, bias",
    [(1, 1, 1, 1, False), (2, 2, 2, 2, True)],  # the ResNet's DCN (caffe: stride 1), and a strided grouped one
)
def test_modulated_deform_conv_equals_mmcv_reference(stride, padding, dilation, deform_groups, bias):
    torch.manual_seed(0)
    m = ModulatedDeformConv2dPack(4, 3, 3, stride, padding, dilation, deform_groups, bias=bias).double()
    with torch.no_grad():
        # Offsets of a few pixels (some samples fall outside the image) and masks away from 0.5.
        m.conv_offset.weight.normal_(0.0, 0.4)
        m.conv_offset.bias.normal_(0.0, 1.0)
        if bias:
            m.bias.normal_()
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64)
    offset, mask = m.offset_and_mask(x)
    assert offset.abs().max() > 2 and (mask - 0.5).abs().max() > 0.3
    with torch.no_grad():
        expected = _mmcv_reference(x, m)
    torch.testing.assert_close(m(x), expected, rtol=1e-10, atol=1e-10)


def test_zero_offsets_make_half_a_plain_conv():
    # mmcv zero-inits conv_offset: every tap sits on the grid with mask sigmoid(0) = 1/2.
    torch.manual_seed(0)
    m = ModulatedDeformConv2dPack(4, 5, 3, 1, 1, 1, 1).double()
    x = torch.randn(1, 4, 6, 5, dtype=torch.float64)
    torch.testing.assert_close(m(x), 0.5 * F.conv2d(x, m.weight, None, 1, 1))


# ------------------------------------------------------------------------------------------------------- backbone
def _tiny(**kw) -> ResNet:
    return ResNet(50, stage_blocks=(1, 1, 1, 1), base_channels=8, **kw)


def test_caffe_style_strides_and_feature_maps():
    caffe = _tiny(**OFFICIAL_RESNET_OVERRIDES)
    pytorch = _tiny(stage_with_dcn=(False, False, True, True))
    assert caffe.layer2[0].conv1.stride == (2, 2) and caffe.layer3[0].conv2.stride == 1  # stride on the 1x1
    assert pytorch.layer2[0].conv1.stride == (1, 1) and pytorch.layer3[0].conv2.stride == 2  # on the 3x3
    assert caffe.depths == (1, 1, 1, 1) and [f["num_chs"] for f in caffe.feature_info] == [32, 64, 128, 256]
    maps = caffe.eval().forward_intermediates(torch.randn(2, 3, 64, 96), indices=(1, 2, 3))
    assert [tuple(f.shape) for f in maps] == [(2, 64, 8, 12), (2, 128, 4, 6), (2, 256, 2, 3)]
    with pytest.raises(ValueError, match="indices"):
        caffe.forward_intermediates(torch.randn(1, 3, 32, 32), indices=(4,))
    with pytest.raises(ValueError, match="unknown ResNet arguments"):
        build_resnet("resnet50", layer_scale=1.0)
    with pytest.raises(ValueError, match="unknown ResNet"):
        build_resnet("resnet77")


def test_frozen_stages_norm_eval_and_optimizer_groups():
    model = build_bevformer_occ_tiny(
        backbone="resnet50",
        backbone_overrides={**OFFICIAL_RESNET_OVERRIDES, "stage_blocks": (1, 1, 1, 1), "base_channels": 8},
        backbone_indices=(2, 3),
        num_levels=2,
    ).train()
    bb = model.img_backbone
    assert not any(m.training for m in bb.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not bb.conv1.weight.requires_grad and not bb.layer1[0].conv2.weight.requires_grad  # frozen stages
    assert bb.layer2[0].conv1.weight.requires_grad and bb.layer3[0].conv2.conv_offset.weight.requires_grad
    assert not bb.layer4[0].bn3.weight.requires_grad  # norm_cfg requires_grad=False
    assert tuple(model.pts_bbox_head.transformer.level_embeds.shape) == (4, 32)
    # mmcv DefaultOptimizerConstructor with custom_keys={'img_backbone': lr_mult 0.1}: decay on everything.
    groups = param_groups(model, 0.01, rule="mmcv_default", backbone_lr_mult=0.1)
    scales = {n: (g["lr_scale"], g["weight_decay"]) for g in groups for n in g["names"]}
    assert scales["img_backbone.layer3.0.conv2.weight"] == (pytest.approx(0.1), 0.01)
    assert scales["img_neck.lateral_convs.0.conv.bias"] == (1.0, 0.01)
    assert "img_backbone.layer1.0.conv1.weight" not in scales and "img_backbone.bn1.weight" not in scales


def test_backbone_checkpoint_layouts(tmp_path):
    torch.manual_seed(0)
    plain = _tiny().state_dict()  # torchvision / ImageNet layout: no DCN offsets, plus a classifier
    plain["fc.weight"] = torch.zeros(10, 256)
    torch.save(plain, tmp_path / "imagenet.pth")
    kw = {**OFFICIAL_RESNET_OVERRIDES, "stage_blocks": (1, 1, 1, 1), "base_channels": 8}
    model = build_resnet("resnet50", str(tmp_path / "imagenet.pth"), **kw)
    torch.testing.assert_close(model.layer3[0].conv2.weight, plain["layer3.0.conv2.weight"])
    assert model.layer3[0].conv2.conv_offset.weight.abs().sum() == 0
    # mmdet3d detector (r101_dcn_fcos3d_pretrain.pth style): img_backbone.* with offsets, neck set aside.
    src = build_resnet("resnet50", **kw).state_dict()
    src["layer3.0.conv2.conv_offset.weight"] = torch.randn(27, 32, 3, 3)
    det = {f"img_backbone.{k}": v for k, v in src.items()} | {"img_neck.fpn_convs.0.conv.bias": torch.zeros(4)}
    torch.save({"meta": {}, "state_dict": det}, tmp_path / "fcos3d.pth")
    model = build_bevformer_occ_tiny(
        backbone="resnet50",
        backbone_overrides=kw,
        backbone_checkpoint=str(tmp_path / "fcos3d.pth"),
        backbone_indices=(2, 3),
        num_levels=2,
    )
    torch.testing.assert_close(
        model.img_backbone.layer3[0].conv2.conv_offset.weight, src["layer3.0.conv2.conv_offset.weight"]
    )
    del plain["layer2.0.conv1.weight"]
    torch.save(plain, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="missing"):
        build_resnet("resnet50", str(tmp_path / "broken.pth"), **kw)
    with pytest.raises(ValueError, match="shape"):
        build_resnet("resnet50", str(tmp_path / "imagenet.pth"), **{**kw, "base_channels": 16})


# ------------------------------------------------------------------------------------------------------- training
def _rig(n: int, t: int) -> torch.Tensor:
    """lidar2img (n, t, 6, 4, 4) of six pinhole cameras at the origin (f 40, principal point (48, 32)) looking
    out at yaws 0, 60, ..., 300 degrees (camera x right, y down, z forward)."""
    mats = []
    k = torch.tensor([[40.0, 0.0, 48.0], [0.0, 40.0, 32.0], [0.0, 0.0, 1.0]])
    for c in range(6):
        a = math.radians(60 * c)
        forward, right = [math.cos(a), math.sin(a), 0.0], [math.sin(a), -math.cos(a), 0.0]
        m = torch.eye(4)
        m[:3, :3] = k @ torch.tensor([right, [0.0, 0.0, -1.0], forward])
        mats.append(m)
    return torch.stack(mats).expand(n, t, 6, 4, 4).clone()


def test_tiny_resnet_model_training_step():
    torch.manual_seed(1)
    model = build_bevformer_occ_tiny(
        backbone="resnet50",
        backbone_overrides={**OFFICIAL_RESNET_OVERRIDES, "stage_blocks": (1, 1, 1, 1), "base_channels": 8},
        backbone_indices=(2, 3),
        num_levels=2,
    ).train()
    bb = model.img_backbone
    with torch.no_grad():  # a trained-looking DCN (mmdet starts it at zero offsets and zero last-BN gammas)
        for m in bb.modules():
            if isinstance(m, ModulatedDeformConv2dPack):
                m.conv_offset.weight.normal_(0.0, 0.01)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.fill_(1.0)
    running = bb.layer3[0].bn2.running_mean.clone()
    n, t = 1, 2
    img = torch.randn(n, t, 6, 3, 64, 96)
    can_bus = torch.zeros(n, t, 18)
    can_bus[:, :, :3] = torch.tensor([[100.0, 200.0, 0.0], [101.0, 200.5, 0.0]])
    labels = torch.randint(0, 18, (n, 50, 50, 8))
    losses = model(img, _rig(n, t), can_bus, (64, 96), torch.ones(n, t, dtype=torch.bool), labels)
    assert torch.isfinite(losses["loss_occ"]) and abs(losses["loss_occ"].item() - math.log(18)) < 1.5
    losses["loss_occ"].backward()
    for p in (
        bb.layer2[0].conv1.weight,
        bb.layer3[0].conv2.weight,
        bb.layer3[0].conv2.conv_offset.weight,  # the offsets learn
        bb.layer4[0].conv2.conv_offset.bias,
        model.img_neck.lateral_convs[0].conv.weight,
        model.pts_bbox_head.transformer.predicter[2].weight,
    ):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert bb.conv1.weight.grad is None and bb.layer1[0].conv1.weight.grad is None and bb.bn1.weight.grad is None
    torch.testing.assert_close(bb.layer3[0].bn2.running_mean, running)  # norm_eval: statistics untouched
    assert model.training and not bb.layer3[0].bn2.training
