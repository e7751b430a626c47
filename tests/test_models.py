"""InternImage family: official key layout and sizes, every variant builds and trains, timm contract."""

from __future__ import annotations

import pytest
import timm
import torch

import internimage
from internimage.models import MODEL_NAMES, create_model, list_models

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


# Hyper-parameters of the original release, written out from OpenGVLab/InternImage
# classification/configs/without_lr_decay/internimage_{t,s,b,l,xl}_*.yaml (T: configs/with_lr_decay, the same model),
# classification/configs/internimage_{h,g}_22kto1k_*.yaml and, for keys a YAML leaves unset, the defaults of
# classification/config.py (LAYER_SCALE None, POST_NORM/RES_POST_NORM/LEVEL2_POST_NORM/CENTER_FEATURE_SCALE/
# USE_CLIP_PROJECTOR False, DW_KERNEL_SIZE None = the DCN kernel 3, MLP_RATIO 4.0). The HF config.json files agree.
ORIGINAL_CONFIGS = {
    "t": dict(channels=64, depths=(4, 4, 18, 4), groups=(4, 8, 16, 32), mlp_ratio=4.0, offset_scale=1.0,
              layer_scale=None, post_norm=False, res_post_norm=False, dw_kernel_size=None, level2_post_norm=False,
              level2_post_norm_block_ids=None, center_feature_scale=False, use_clip_projector=False),
    "s": dict(channels=80, depths=(4, 4, 21, 4), groups=(5, 10, 20, 40), mlp_ratio=4.0, offset_scale=1.0,
              layer_scale=1e-5, post_norm=True, res_post_norm=False, dw_kernel_size=None, level2_post_norm=False,
              level2_post_norm_block_ids=None, center_feature_scale=False, use_clip_projector=False),
    "b": dict(channels=112, depths=(4, 4, 21, 4), groups=(7, 14, 28, 56), mlp_ratio=4.0, offset_scale=1.0,
              layer_scale=1e-5, post_norm=True, res_post_norm=False, dw_kernel_size=None, level2_post_norm=False,
              level2_post_norm_block_ids=None, center_feature_scale=False, use_clip_projector=False),
    "l": dict(channels=160, depths=(5, 5, 22, 5), groups=(10, 20, 40, 80), mlp_ratio=4.0, offset_scale=2.0,
              layer_scale=1e-5, post_norm=True, res_post_norm=False, dw_kernel_size=None, level2_post_norm=False,
              level2_post_norm_block_ids=None, center_feature_scale=False, use_clip_projector=False),
    "xl": dict(channels=192, depths=(5, 5, 24, 5), groups=(12, 24, 48, 96), mlp_ratio=4.0, offset_scale=2.0,
               layer_scale=1e-5, post_norm=True, res_post_norm=False, dw_kernel_size=None, level2_post_norm=False,
               level2_post_norm_block_ids=None, center_feature_scale=False, use_clip_projector=False),
    "h": dict(channels=320, depths=(6, 6, 32, 6), groups=(10, 20, 40, 80), mlp_ratio=4.0, offset_scale=1.0,
              layer_scale=None, post_norm=False, res_post_norm=True, dw_kernel_size=5, level2_post_norm=True,
              level2_post_norm_block_ids=(5, 11, 17, 23, 29), center_feature_scale=True, use_clip_projector=True),
    "g": dict(channels=512, depths=(2, 2, 48, 4), groups=(16, 32, 64, 128), mlp_ratio=4.0, offset_scale=1.0,
              layer_scale=None, post_norm=True, res_post_norm=False, dw_kernel_size=5, level2_post_norm=True,
              level2_post_norm_block_ids=(5, 11, 17, 23, 29, 35, 41, 47), center_feature_scale=True,
              use_clip_projector=True),
}  # fmt: skip
# Released checkpoint -> (size, classes): 21841 is the ImageNet-22K class count of the original's
# classification/dataset/build.py (and the HF 22k_model/*/config.json); 1k / 22kto1k heads have 1000.
ORIGINAL_CHECKPOINTS = {
    "internimage_t_1k_224": ("t", 1000),
    "internimage_s_1k_224": ("s", 1000),
    "internimage_b_1k_224": ("b", 1000),
    "internimage_l_22k_384": ("l", 21841),
    "internimage_l_22kto1k_384": ("l", 1000),
    "internimage_xl_22k_384": ("xl", 21841),
    "internimage_xl_22kto1k_384": ("xl", 1000),
    "internimage_h_jointto22k_384": ("h", 21841),
    "internimage_h_22kto1k_384": ("h", 1000),
    "internimage_h_22kto1k_640": ("h", 1000),
    "internimage_g_jointto22k_384": ("g", 21841),
    "internimage_g_22kto1k_512": ("g", 1000),
}


def original_state_dict_shapes(cfg: dict, num_classes: int) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the original ``InternImage(**cfg)`` (classification/models/intern_image.py), module by module.

    ``build_norm_layer`` returns ``nn.Sequential([permute?, norm, permute?])``: a channels-first input puts a permute
    first (the norm is ``.1``), a channels-last one does not (``.0``). The model passes ``norm_layer='LN'`` to the stem.
    """
    shapes: dict[str, tuple[int, ...]] = {}

    def add(prefix: str, **params: tuple[int, ...]) -> None:
        shapes.update({f"{prefix}.{name}": shape for name, shape in params.items()})

    def ln(prefix: str, dim: int) -> None:
        add(prefix, weight=(dim,), bias=(dim,))

    def linear(prefix: str, out_dim: int, in_dim: int, bias: bool = True) -> None:
        add(prefix, weight=(out_dim, in_dim), **({"bias": (out_dim,)} if bias else {}))

    c = cfg["channels"]
    # StemLayer: conv3x3 s2 (3 -> C/2) -> LN (channels_first in/out) -> GELU -> conv3x3 s2 -> LN (first -> last)
    add("patch_embed.conv1", weight=(c // 2, 3, 3, 3), bias=(c // 2,))
    ln("patch_embed.norm1.1", c // 2)
    add("patch_embed.conv2", weight=(c, c // 2, 3, 3), bias=(c,))
    ln("patch_embed.norm2.1", c)
    k, points = 3, 9  # InternImageLayer builds its DCNv3 with kernel_size=3 (remove_center False: 3*3 points)
    dw_k = cfg["dw_kernel_size"] or k  # DCNv3: dw_kernel_size if not None else kernel_size
    for i, (depth, g) in enumerate(zip(cfg["depths"], cfg["groups"])):
        ch, lvl = c * 2**i, f"levels.{i}"
        for j in range(depth):
            b = f"{lvl}.blocks.{j}"
            ln(f"{b}.norm1.0", ch)
            add(f"{b}.dcn.dw_conv.0", weight=(ch, 1, dw_k, dw_k), bias=(ch,))  # depthwise, groups=channels
            ln(f"{b}.dcn.dw_conv.1.1", ch)  # build_norm_layer(ch, 'LN', 'channels_first', 'channels_last')
            linear(f"{b}.dcn.offset", g * points * 2, ch)
            linear(f"{b}.dcn.mask", g * points, ch)
            linear(f"{b}.dcn.input_proj", ch, ch)
            linear(f"{b}.dcn.output_proj", ch, ch)
            if cfg["center_feature_scale"]:
                add(f"{b}.dcn", center_feature_scale_proj_weight=(g, ch), center_feature_scale_proj_bias=(g,))
            ln(f"{b}.norm2.0", ch)
            hidden = int(ch * cfg["mlp_ratio"])
            linear(f"{b}.mlp.fc1", hidden, ch)
            linear(f"{b}.mlp.fc2", ch, hidden)
            if cfg["layer_scale"] is not None:
                add(b, gamma1=(ch,), gamma2=(ch,))
            if cfg["res_post_norm"]:
                ln(f"{b}.res_post_norm1.0", ch)
                ln(f"{b}.res_post_norm2.0", ch)
        if not cfg["post_norm"] or cfg["center_feature_scale"]:
            ln(f"{lvl}.norm.0", ch)
        if cfg["level2_post_norm"] and i == 2:
            for n in range(len(cfg["level2_post_norm_block_ids"])):
                ln(f"{lvl}.post_norms.{n}.0", ch)
        if i < len(cfg["depths"]) - 1:  # DownsampleLayer: conv3x3 s2 without bias, LN (channels_first -> last)
            add(f"{lvl}.downsample.conv", weight=(2 * ch, ch, 3, 3))
            ln(f"{lvl}.downsample.norm.1", 2 * ch)
    features = c * 2 ** (len(cfg["depths"]) - 1)
    if not cfg["use_clip_projector"]:
        hidden = int(features * 1.5)  # cls_scale is never passed: 1.5
        add("conv_head.0", weight=(hidden, features, 1, 1))  # no bias
        add("conv_head.1.0", weight=(hidden,), bias=(hidden,), running_mean=(hidden,), running_var=(hidden,))
        shapes["conv_head.1.0.num_batches_tracked"] = ()  # BatchNorm2d, channels_first in and out: no permute
        linear("head", num_classes, hidden)
    else:
        embed, stride, clip_dim = 1024, 2, 768  # pretrain_embed_dim, _stride, clip_embed_dim
        add("dcnv3_head_x4.0", weight=(embed * stride**2, features, 1, 1), bias=(embed * stride**2,))
        add("dcnv3_head_x3", weight=(embed, features // 2, 1, 1), bias=(embed,))
        for t in "qkv":
            ln(f"clip_projector.norm1_{t}.0", embed)
            linear(f"clip_projector.cross_dcn.{t}", embed, embed, bias=False)  # qkv_bias=True: separate *_bias
            shapes[f"clip_projector.cross_dcn.{t}_bias"] = (embed,)
        linear("clip_projector.cross_dcn.proj", clip_dim, embed)
        ln("fc_norm.0", clip_dim)
        linear("head", num_classes, clip_dim)
    return shapes


def test_original_checkpoint_table_covers_the_zoo():
    assert set(ORIGINAL_CHECKPOINTS) == set(ZOO_MODELS)


@pytest.mark.parametrize("name", ZOO_MODELS)
def test_official_state_dict_layout(name):
    """Every key and shape of the original model, derived from the original's configs and module definitions."""
    size, num_classes = ORIGINAL_CHECKPOINTS[name]
    cfg = ORIGINAL_CONFIGS[size]
    model = _meta_model(name)
    ours = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    expected = original_state_dict_shapes(cfg, num_classes)
    assert sorted(ours.keys() - expected.keys()) == [] and sorted(expected.keys() - ours.keys()) == []
    assert [key for key in expected if ours[key] != expected[key]] == []
    # What the shapes cannot show: the DCN geometry and the residual-branch flavour of every block.
    for i, level in enumerate(model.levels):
        for block in level.blocks:
            dcn = block.dcn
            assert (dcn.kernel_size, dcn.stride, dcn.pad, dcn.dilation) == (3, 1, 1, 1)
            assert dcn.group == cfg["groups"][i] and dcn.offset_scale == cfg["offset_scale"]
            assert block.post_norm == cfg["post_norm"] and block.res_post_norm == cfg["res_post_norm"]
            assert block.layer_scale == (cfg["layer_scale"] is not None)


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


def _fx_trace(model):
    """The full model as an FX graph, traced the way timm's own tests and FX feature extraction trace it."""
    from timm.models import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    tracer = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer)
    return create_feature_extractor(
        model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]], tracer_kwargs=tracer
    )


@pytest.mark.parametrize("name", ["internimage_test_32", "internimage_test_h_32", "flash_intern_image_t_1k_224"])
def test_fx_traced_model_equals_eager_forward_and_gradients(name):
    torch.manual_seed(0)
    kw = dict(depths=(1, 1, 1, 1)) if name.startswith("flash") else {}
    model = create_model(name, num_classes=6, **kw)
    x = torch.randn(2, 3, 64, 64)
    traced = _fx_trace(model.eval())
    with torch.no_grad():
        torch.testing.assert_close(next(iter(traced(x).values())), model(x), rtol=0, atol=0)
    # The input check is a no-trace function: it runs inside the graph.
    with pytest.raises(ValueError, match="expects a float image batch"):
        traced(x[:, :1])
    model.train()
    traced.train()
    model(x).square().sum().backward()
    eager = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    next(iter(traced(x).values())).square().sum().backward()
    for n, p in traced.named_parameters():
        torch.testing.assert_close(p.grad, eager[n], rtol=1e-6, atol=1e-7, msg=n)


@pytest.mark.parametrize("name", ["internimage_test_32", "internimage_test_post_32", "internimage_test_g_32"])
def test_fx_and_hook_features_equal_the_getter_features(name):
    torch.manual_seed(0)
    getter = timm.create_model(name, features_only=True, feature_cls="getter").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = getter(x)
    assert getter.output_fmt == "NCHW" and [f.shape[1] for f in expected] == getter.feature_info.channels()
    for cls in ("fx", "hook"):
        torch.manual_seed(0)  # the same weights: the wrappers name their state dicts differently
        other = timm.create_model(name, features_only=True, feature_cls=cls).eval()
        assert other.output_fmt == "NHWC"  # the tapped modules' own channels-last maps
        with torch.no_grad():
            for a, b in zip(other(x), expected, strict=True):
                torch.testing.assert_close(a.permute(0, 3, 1, 2), b, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["internimage_test_32", "internimage_test_h_32"])
def test_global_pool_empty_returns_maps_whose_mean_is_the_pooled_output(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=0).eval()
    x = torch.randn(2, 3, 64, 64)
    stride = 16 if model.use_clip_projector else 32
    h = w = 64 // stride
    with torch.no_grad():
        pooled = model(x)
        assert pooled.shape == (2, model.head_hidden_size)
        model.reset_classifier(0, "")
        maps = model(x)
        assert maps.shape[2:] == (h, w) and maps.shape == model.forward_head(model.forward_features(x), True).shape
        model.reset_classifier(0, "avg")
        torch.testing.assert_close(model(x), pooled, rtol=0, atol=0)  # the projector/conv head was kept
        dense = create_model(name, num_classes=5, global_pool="").eval()
        logits = dense(x)
        assert logits.shape == (2, 5, h, w)
        if not model.use_clip_projector:
            # The classifier is linear: the mean of per-position logits is the logit of the pooled features.
            head = dense.get_classifier()
            unpooled = dense.forward_head(dense.forward_features(x), pre_logits=True)
            torch.testing.assert_close(logits.mean((2, 3)), head(unpooled.mean((2, 3))), rtol=1e-5, atol=1e-6)
    assert timm.models.get_pretrained_cfg(name).pool_size == (h // 2, w // 2)  # at the 32 px default input size


def test_create_model_device_and_dtype_place_every_tensor():
    model = timm.create_model("internimage_test_h_32", device="meta", dtype=torch.bfloat16)
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    assert {t.device.type for t in tensors.values()} == {"meta"}
    assert {t.dtype for n, t in tensors.items() if t.is_floating_point()} == {torch.bfloat16}
    out = model.eval()(torch.randn(1, 3, 32, 32, device="meta", dtype=torch.bfloat16))
    assert out.shape == (1, 10) and out.dtype == torch.bfloat16
    model.reset_classifier(3)
    assert model.head.weight.device.type == "meta" and model.head.weight.dtype == torch.bfloat16
    assert not model.head.training
    with pytest.raises(TypeError):
        timm.create_model("internimage_test_32", device="meta", not_a_model_arg=1)
    assert model.no_weight_decay() == set()
