"""SegFormer decode head (mmseg 0.x ``SegformerHead``) on InternImage: shapes, training, official layout, export.

Everything runs on the tiny ``internimage_test_32`` backbone (C=16) with 32-64 px images and a narrow head.
"""

from __future__ import annotations

import pytest
import torch

import internimage
from internimage.segmentation.models import (
    SegformerHead,
    build_segformer,
    load_segmentation_checkpoint,
    mmseg_layer_id,
)

K = 5
CH = 16  # head width of the tiny segmentor (256 officially)
IN_CHANNELS = [16, 32, 64, 128]


def tiny_segformer(num_classes: int = K) -> torch.nn.Module:
    torch.manual_seed(0)
    backbone = internimage.create_model("internimage_test_32", num_classes=0, layer_scale=1.0)
    return build_segformer(backbone, num_classes, channels=CH)


def test_head_output_is_at_the_finest_selected_map():
    head = SegformerHead(IN_CHANNELS, channels=CH, num_classes=K).eval()
    feats = [torch.randn(2, c, 40 // 2**i, 24 // 2**i) for i, c in enumerate(IN_CHANNELS)]
    assert head(feats).shape == (2, K, 40, 24)
    # in_index picks maps like mmseg's multiple_select: the output follows the first selected one.
    two = SegformerHead([32, 128], channels=CH, num_classes=K, in_index=(1, 3)).eval()
    assert two(feats).shape == (2, K, 20, 12)
    with pytest.raises(ValueError, match="in_index"):
        SegformerHead(IN_CHANNELS, in_index=(0, 1))


def test_head_computes_what_mmseg_computes():
    """Project each map (1x1 conv + BN + ReLU), upsample to the finest, concat finest first, fuse, classify."""
    import torch.nn.functional as F

    head = SegformerHead(IN_CHANNELS, channels=CH, num_classes=K).eval()
    for m in head.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.running_mean, -0.5, 0.5)
            torch.nn.init.uniform_(m.running_var, 0.5, 2.0)
    feats = [torch.randn(1, c, 16 // 2**i, 16 // 2**i) for i, c in enumerate(IN_CHANNELS)]

    def conv_module(m, x):
        return F.relu(F.batch_norm(m.conv(x), m.bn.running_mean, m.bn.running_var, m.bn.weight, m.bn.bias, False))

    outs = [
        F.interpolate(conv_module(head.convs[i], x), size=(16, 16), mode="bilinear", align_corners=False)
        for i, x in enumerate(feats)
    ]
    ref = head.conv_seg(conv_module(head.fusion_conv, torch.cat(outs, 1)))
    assert torch.allclose(head(feats), ref, atol=1e-5)


def test_segmentor_shapes_training_step_and_gradients():
    model = tiny_segformer()
    assert model.auxiliary_head is None
    x, y = torch.randn(2, 3, 64, 48), torch.randint(0, K, (2, 64, 48))
    y[:, :4] = 255
    assert model.decode_head(model.extract_feat(x)).shape == (2, K, 16, 12)  # 1/4 of the input
    assert model(x).shape == (2, K, 64, 48)
    out = model(x, y)
    assert set(out) == {"loss", "loss_decode", "acc_seg"} and torch.allclose(out["loss"], out["loss_decode"])
    out["loss"].backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    # A few AdamW steps on one batch lower the loss (the head is trainable end to end).
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(8):
        loss = model(x, y)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    probs = model.eval().predict(x, scale=None)
    assert probs.shape == (2, K, 64, 48) and torch.allclose(probs.sum(1), torch.ones(2, 64, 48), atol=1e-5)


def test_segformer_head_is_one_layer_decay_group_with_scale_one():
    depths, n = (5, 5, 22, 5), 37  # segformer_internimage_l_*: num_layers=37
    for name in ("convs.0.conv.weight", "fusion_conv.bn.bias", "conv_seg.weight"):
        assert mmseg_layer_id(f"decode_head.{name}", depths, n) == n + 1


def official_segformer_shapes(in_channels: list[int], ch: int, k: int) -> dict[str, tuple[int, ...]]:
    """mmseg 0.30 ``SegformerHead`` names and shapes, written from its definition: ``convs`` = one ConvModule (1x1
    conv without bias, SyncBN, ReLU) per input, ``fusion_conv`` = ConvModule(len(in) * ch -> ch, 1x1), ``conv_seg`` =
    Conv2d(ch -> K, 1x1) with bias; no auxiliary head in the official configs."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv_module(prefix: str, cin: int, cout: int) -> None:
        shapes[f"{prefix}.conv.weight"] = (cout, cin, 1, 1)
        for b in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.bn.{b}"] = (cout,)
        shapes[f"{prefix}.bn.num_batches_tracked"] = ()

    for i, c in enumerate(in_channels):
        conv_module(f"decode_head.convs.{i}", c, ch)
    conv_module("decode_head.fusion_conv", len(in_channels) * ch, ch)
    shapes["decode_head.conv_seg.weight"], shapes["decode_head.conv_seg.bias"] = (k, ch, 1, 1), (k,)
    return shapes


def test_official_segformer_layout_loads_strictly(tmp_path):
    model = tiny_segformer()
    heads = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    expected = official_segformer_shapes(IN_CHANNELS, CH, K)
    assert heads == expected
    g = torch.Generator().manual_seed(3)
    sd = {f"backbone.{k}": torch.randn(v.shape, generator=g) for k, v in model.backbone.state_dict().items()}
    for name, shape in expected.items():
        sd[name] = torch.randint(0, 100, shape) if name.endswith("num_batches_tracked") else torch.randn(shape)
    torch.save({"state_dict": sd, "meta": {"mmseg_version": "0.27.0"}}, tmp_path / "segformer.pth")
    result = load_segmentation_checkpoint(model, tmp_path / "segformer.pth", strict=True)
    assert result.ok
    own = model.state_dict()
    assert set(own) == set(sd) and all(torch.equal(own[k], v.to(own[k].dtype)) for k, v in sd.items())
    # A checkpoint for another class count is refused strictly, and loads with new_classes.
    other = tiny_segformer(num_classes=K + 2)
    assert load_segmentation_checkpoint(other, tmp_path / "segformer.pth", new_classes=True).ok


def test_full_size_official_layout_on_the_meta_device():
    """segformer_internimage_l/xl_*: in_channels (160, 320, 640, 1280) / (192, 384, 768, 1536), 256 wide, 150 outputs
    (the configs keep num_classes=150)."""
    for arch, c in (("internimage_l_22k_384", 160), ("internimage_xl_22k_384", 192)):
        with torch.device("meta"):
            backbone = internimage.create_model(arch, num_classes=0, layer_scale=1.0)
            model = build_segformer(backbone, 150, channels=256)
        heads = {k: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith("decode_head.")}
        assert heads == official_segformer_shapes([c, 2 * c, 4 * c, 8 * c], 256, 150)


def test_segformer_segmentor_exports():
    from internimage.ops import export_mode

    model = tiny_segformer().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(), export_mode():
        program = torch.export.export(model, (x,))
    with torch.no_grad():
        assert torch.allclose(program.module()(x), model(x), atol=1e-4)
