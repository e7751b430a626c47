"""InternImage family: official key layout and sizes, every variant builds and trains, timm contract."""

from __future__ import annotations

import pytest
import timm
import torch

import internimage
from internimage.models import ARCHS, MODEL_NAMES, create_model, list_models
from internimage.models.internimage import _MODEL_SPECS

TEST_MODELS = [n for n in MODEL_NAMES if "_test" in n]
ZOO_MODELS = list_models("internimage_*")


def _meta_model(name: str, **kw):
    with torch.device("meta"):
        return create_model(name, **kw)


def test_registry_names_match_official_zoo():
    assert set(ZOO_MODELS) == {
        "internimage_t_1k_224", "internimage_s_1k_224", "internimage_b_1k_224", "internimage_l_22k_384",
        "internimage_l_22kto1k_384", "internimage_xl_22k_384", "internimage_xl_22kto1k_384",
        "internimage_h_jointto22k_384", "internimage_h_22kto1k_384", "internimage_h_22kto1k_640",
        "internimage_g_jointto22k_384", "internimage_g_22kto1k_512",
    }  # fmt: skip
    assert set(timm.list_models("internimage_*")) >= set(ZOO_MODELS)


def test_internimage_t_has_exactly_the_official_parameter_count():
    model = _meta_model("internimage_t_1k_224")
    assert sum(p.numel() for p in model.parameters()) == 29_918_424


@pytest.mark.parametrize("name", ZOO_MODELS)
def test_official_state_dict_layout(name):
    """Keys and shapes from ORIGINAL.md §1.3, derived here from the variant table."""
    arch = ARCHS[_MODEL_SPECS[name][0]]
    sd = _meta_model(name).state_dict()
    c, g0 = arch.channels, arch.groups[0]
    k = arch.dw_kernel_size or 3
    assert sd["patch_embed.conv1.weight"].shape == (c // 2, 3, 3, 3)
    assert "patch_embed.norm1.1.weight" in sd and "patch_embed.norm2.1.bias" in sd
    b = "levels.0.blocks.0."
    assert sd[b + "dcn.dw_conv.0.weight"].shape == (c, 1, k, k)
    assert b + "dcn.dw_conv.1.1.weight" in sd and b + "norm1.0.weight" in sd and b + "norm2.0.weight" in sd
    assert sd[b + "dcn.offset.weight"].shape == (g0 * 18, c)
    assert sd[b + "dcn.mask.weight"].shape == (g0 * 9, c)
    assert sd[b + "mlp.fc1.weight"].shape == (4 * c, c)
    assert ("levels.0.norm.0.weight" in sd) == (not arch.post_norm or arch.center_feature_scale)
    assert (b + "gamma1" in sd) == (arch.layer_scale is not None)
    assert (b + "res_post_norm1.0.weight" in sd) == arch.res_post_norm
    assert (b + "dcn.center_feature_scale_proj_weight" in sd) == arch.center_feature_scale
    if arch.center_feature_scale:
        assert sd[b + "dcn.center_feature_scale_proj_weight"].shape == (g0, c)
        assert sd[b + "dcn.center_feature_scale_proj_bias"].shape == (g0,)
    for i in range(3):
        assert sd[f"levels.{i}.downsample.conv.weight"].shape == (2 * c * 2**i, c * 2**i, 3, 3)
        assert f"levels.{i}.downsample.norm.1.weight" in sd
    assert "levels.3.downsample.conv.weight" not in sd
    ids = arch.level2_post_norm_block_ids or ()
    assert sum(key.startswith("levels.2.post_norms.") and key.endswith(".0.weight") for key in sd) == len(ids)
    if arch.use_clip_projector:
        for key in ("dcnv3_head_x4.0.weight", "dcnv3_head_x3.weight", "clip_projector.norm1_q.0.weight",
                    "clip_projector.cross_dcn.q.weight", "clip_projector.cross_dcn.v_bias",
                    "clip_projector.cross_dcn.proj.weight", "fc_norm.0.weight"):  # fmt: skip
            assert key in sd, key
        assert sd["dcnv3_head_x4.0.weight"].shape == (4096, 8 * c, 1, 1)
        assert sd["head.weight"].shape == (_MODEL_SPECS[name][1]["num_classes"], 768)
    else:
        assert sd["conv_head.0.weight"].shape == (12 * c, 8 * c, 1, 1)
        assert "conv_head.1.0.running_var" in sd and "conv_head.1.0.num_batches_tracked" in sd
        assert sd["head.weight"].shape == (_MODEL_SPECS[name][1]["num_classes"], 12 * c)


@pytest.mark.parametrize("arch", ["h", "g"])
def test_h_and_g_build_and_run_at_reduced_depth(arch):
    torch.manual_seed(0)
    name = {"h": "internimage_h_22kto1k_384", "g": "internimage_g_22kto1k_512"}[arch]
    model = create_model(name, depths=(1, 1, 2, 1), level2_post_norm_block_ids=(1,), num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 7) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", TEST_MODELS)
def test_forward_backward_finite(name):
    torch.manual_seed(0)
    model = create_model(name, drop_path_rate=0.1)
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # Zero-initialised offset/mask projections must still receive gradient.
    assert model.levels[0].blocks[0].dcn.offset.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["internimage_test_32", "internimage_test_h_32"])
def test_grad_checkpointing_gives_identical_outputs_and_grads(name):
    torch.manual_seed(0)
    model = create_model(name).train()
    x = torch.randn(2, 3, 64, 64)
    ref = model(x)
    ref.sum().backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out = model(x)
    out.sum().backward()
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    for g, r in zip((p.grad for p in model.parameters()), ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["internimage_test_32", "internimage_test_g_32"])
def test_timm_features_only(name):
    model = timm.create_model(name, features_only=True, out_indices=(0, 1, 2, 3))
    assert model.feature_info.channels() == [16, 32, 64, 128]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    feats = model(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(1, 16, 16, 24), (1, 32, 8, 12), (1, 64, 4, 6), (1, 128, 2, 3)]
    assert all(f.is_contiguous() for f in feats)
    partial = timm.create_model(name, features_only=True, out_indices=(1, 2))
    assert [f.shape[1] for f in partial(torch.randn(1, 3, 64, 64))] == [32, 64]


def test_timm_contract():
    model = timm.create_model("internimage_test_32", num_classes=5)
    x = torch.randn(2, 3, 64, 64)
    assert model(x).shape == (2, 5)
    feats = model.forward_features(x)
    assert feats.shape == (2, 128, 2, 2)
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.head_hidden_size)
    final, inter = model.forward_intermediates(x)
    assert len(inter) == 4 and torch.equal(final, feats)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.get_classifier().out_features == 3
    assert model.pretrained_cfg["input_size"] == (3, 32, 32)
    t_cfg = timm.models.get_pretrained_cfg("internimage_t_1k_224")
    assert t_cfg.interpolation == "bicubic" and t_cfg.crop_pct == 1.0 and t_cfg.input_size == (3, 224, 224)


def test_group_matcher_follows_official_layer_decay_rule():
    model = _meta_model("internimage_t_1k_224")
    layer_id = model.group_matcher()
    assert layer_id("patch_embed.conv1.weight") == layer_id("levels.0.blocks.0.norm1.0.weight") == (1,)
    assert layer_id("levels.0.downsample.conv.weight") == layer_id("levels.1.blocks.0.dcn.offset.weight") == (5,)
    assert layer_id("levels.2.norm.0.weight") == layer_id("levels.3.blocks.0.mlp.fc1.weight")
    assert layer_id("head.weight") == layer_id("levels.3.blocks.3.mlp.fc2.bias") == (30,)
    from timm.optim import create_optimizer_v2

    optimizer = create_optimizer_v2(create_model("internimage_test_32"), "adamw", layer_decay=0.9)
    scales = sorted({g["lr_scale"] for g in optimizer.param_groups})
    assert len(scales) == 5 and scales[-1] == 1.0  # one group per block; stem/downsamples/head join blocks


def test_create_model_overrides_and_errors():
    model = create_model("internimage_test_32", depths=(1, 1, 1, 1), in_chans=1, num_classes=4, layer_scale=1.0)
    assert len(model.levels[2].blocks) == 1
    assert "levels.0.blocks.0.gamma1" in model.state_dict()
    assert model.eval()(torch.randn(1, 1, 32, 32)).shape == (1, 4)
    with pytest.raises(ValueError, match="unknown InternImage model"):
        create_model("internimage_q_1k_224")
    with pytest.raises(ValueError, match="not divisible by groups"):
        create_model("internimage_test_32", groups=(3, 2, 4, 8))
    with pytest.raises(ValueError, match="bad argument"):
        create_model("internimage_test_32", not_an_option=1)
    assert internimage.list_models("internimage_t*") == ["internimage_t_1k_224"]


def test_forward_names_the_expected_input():
    model = create_model("internimage_test_32", depths=(1, 1, 1, 1), num_classes=4).eval()
    bad = {
        "rank": torch.rand(3, 32, 32),  # a single image without the batch dimension
        "channels": torch.rand(1, 1, 32, 32),
        "dtype": torch.randint(0, 255, (1, 3, 32, 32), dtype=torch.uint8),  # raw pixels, not normalised floats
    }
    for what, x in bad.items():
        for call in (model, model.forward_features, lambda t: model.forward_intermediates(t, intermediates_only=True)):
            with pytest.raises(ValueError) as info:
                call(x)
            expected = "InternImage expects a float image batch (N, C, H, W) with C=3, got a tensor of dtype "
            assert str(info.value) == expected + f"{str(x.dtype)[6:]} and shape {tuple(x.shape)}", what
    assert model(torch.rand(2, 3, 32, 32, dtype=torch.float64).float()).shape == (2, 4)
    traced = torch.jit.trace(model, torch.rand(1, 3, 32, 32), check_trace=False)  # the check costs tracing nothing
    assert traced(torch.rand(1, 3, 32, 32)).shape == (1, 4)


def test_bf16_autocast_gradients_are_finite_and_repeatable_on_tiny_maps():
    """16 px inputs make 1x1 maps at the last downsample, where torch's CPU bf16 conv backward misbehaves."""
    torch.manual_seed(0)
    model = create_model("internimage_test_32", num_classes=4, in_chans=1).train()
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 4, (8,))
    norms = []
    for _ in range(10):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        norms.append(torch.stack([p.grad.float().norm() for p in model.parameters()]))
    assert all(torch.isfinite(n).all() for n in norms)
    assert all(torch.equal(n, norms[0]) for n in norms)


def test_stem_channels_last_path_matches_the_nchw_computation_in_float64():
    # The CPU stem runs its convs channels-last; the result must be the plain NCHW stem's, and its gradients too.
    import torch.nn.functional as F

    from internimage.models.internimage import StemLayer

    torch.manual_seed(0)
    stem = StemLayer(3, 16)
    for p in stem.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 3, 17, 18, requires_grad=True)
    out = stem(x)
    out.square().sum().backward()

    x64 = x.detach().double().requires_grad_()
    params = {n: p.detach().double().requires_grad_() for n, p in stem.named_parameters()}

    def ln(t, i):  # NCHW -> LN over channels -> NHWC
        return F.layer_norm(t.permute(0, 2, 3, 1), t.shape[1:2], params[f"{i}.weight"], params[f"{i}.bias"], 1e-6)

    y = F.conv2d(x64, params["conv1.weight"], params["conv1.bias"], 2, 1)
    y = F.gelu(ln(y, "norm1.1").permute(0, 3, 1, 2))
    ref = ln(F.conv2d(y, params["conv2.weight"], params["conv2.bias"], 2, 1), "norm2.1")
    ref.square().sum().backward()
    assert out.shape == ref.shape == (2, 5, 5, 16)
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-3, atol=1e-3)
    for n, p in stem.named_parameters():
        torch.testing.assert_close(p.grad.double(), params[n].grad, rtol=1e-3, atol=1e-3, msg=n)
