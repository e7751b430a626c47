"""The official Cityscapes / Mapillary / COCO-Stuff / NYU / Pascal Context / extra ADE20K segmentation presets and
the iNaturalist 2018 classification preset: fields against the original configs, full-size parameter counts against
the zoo (meta device: shapes only).

Until ``SegmentationConfig`` has ``dec_ffn_channels`` / ``test_scale`` and accepts ``head='segformer'`` and the new
``dataset`` names, these fields are stripped or substituted before validation (see :func:`preset_config`).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import internimage
from internimage.models.internimage import MODEL_SPECS
from internimage.segmentation import SegmentationConfig
from internimage.segmentation.models import build_mask2former, build_segformer, build_upernet
from internimage.segmentation.presets import get_preset, list_presets

PENDING_FIELDS = {"dec_ffn_channels", "test_scale"}
SUBSTITUTES = {"head must be": ("head", "upernet"), "dataset must be": ("dataset", "cityscapes")}


def preset_config(name: str) -> tuple[SegmentationConfig, dict]:
    """The validated config of ``name`` and its raw preset dict (fields not yet in the config: only the pending)."""
    preset = get_preset(name)
    known = {f.name for f in dataclasses.fields(SegmentationConfig)}
    assert set(preset) - known <= PENDING_FIELDS, set(preset) - known
    data = {**SegmentationConfig().to_dict(), **{k: v for k, v in preset.items() if k in known}}
    for _ in range(len(SUBSTITUTES) + 1):
        try:
            return SegmentationConfig.from_dict(data), preset
        except ValueError as err:
            hit = [v for k, v in SUBSTITUTES.items() if k in str(err)]
            if not hit:
                raise
            data[hit[0][0]] = hit[0][1]
    raise AssertionError(name)


# name: (dataset, num_classes, crop (h, w), img_scale, ratio_range, iters, head, lr, layer decay, clip, batch/GPU)
C, M, U, S, F = "cityscapes", "mapillary", "upernet", "segformer", "mask2former"
CITY = (C, 150, (512, 1024), [2048, 1024], [0.5, 2.0], 160000)  # cityscapes.py / cityscapes_extra.py, 160k
MAPI = (M, 150, (512, 1024), [2048, 1024], [0.5, 1.0], 80000)  # mapillary.py, 80k
SMALL, LARGE = (6e-5, 1.0, None, 2), (2e-5, 0.94, 0.1, 2)  # T/S/B and L/XL optimiser rules
EXPECTED = {
    "upernet_internimage_t_512x1024_160k_cityscapes": (*CITY, U, *SMALL),
    "upernet_internimage_s_512x1024_160k_cityscapes": (*CITY, U, *SMALL),
    "upernet_internimage_b_512x1024_160k_cityscapes": (*CITY, U, *SMALL),
    "upernet_internimage_l_512x1024_160k_cityscapes": (*CITY, U, *LARGE),
    "upernet_internimage_xl_512x1024_160k_cityscapes": (*CITY, U, *LARGE),
    "upernet_internimage_l_512x1024_160k_mapillary2cityscapes": (*CITY, U, *LARGE),
    "upernet_internimage_xl_512x1024_160k_mapillary2cityscapes": (*CITY, U, *LARGE),
    "segformer_internimage_l_512x1024_160k_mapillary2cityscapes": (*CITY, S, *LARGE),
    "segformer_internimage_xl_512x1024_160k_mapillary2cityscapes": (*CITY, S, *LARGE),
    "mask2former_internimage_h_1024x1024_80k_mapillary2cityscapes": (
        C, 19, (1024, 1024), [2048, 1024], [0.5, 2.0], 80000, F, 1e-5, 0.95, 0.1, 2,
    ),
    "upernet_internimage_l_512x1024_80k_mapillary": (*MAPI, U, *LARGE),
    "upernet_internimage_xl_512x1024_80k_mapillary": (*MAPI, U, *LARGE),
    "segformer_internimage_l_512x1024_80k_mapillary": (*MAPI, S, *LARGE),
    "segformer_internimage_xl_512x1024_80k_mapillary": (*MAPI, S, *LARGE),
    "mask2former_internimage_h_896x896_80k_mapillary": (
        M, 19, (896, 896), [2048, 1024], [0.5, 2.0], 80000, F, 2e-5, 0.95, 0.1, 2,
    ),
    "mask2former_internimage_h_896_80k_cocostuff164k": (
        "cocostuff164k", 171, (896, 896), [3584, 896], [0.5, 2.0], 80000, F, 2e-5, 0.95, None, 1,
    ),
    "mask2former_internimage_h_512_40k_cocostuff164k_to_10k": (
        "cocostuff10k", 171, (512, 512), [2048, 512], [0.5, 2.0], 40000, F, 1e-5, 0.95, None, 1,
    ),
    "mask2former_internimage_h_480_40k_nyu": (
        "nyu", 40, (480, 480), [2048, 512], [0.5, 2.0], 40000, F, 2e-5, 0.95, None, 1,
    ),
    "mask2former_internimage_h_480_40k_pascal_context_59": (
        "pascal_context", 59, (480, 480), [520, 520], [0.5, 2.0], 40000, F, 2e-5, 0.95, None, 1,
    ),
    "upernet_internimage_g_896_160k_ade20k": (
        "ade20k", 150, (896, 896), [3584, 896], [0.5, 2.0], 160000, U, 2e-5, 0.95, 0.1, 1,
    ),
    "mask2former_internimage_h_896_80k_cocostuff2ade20k_ms": (
        "ade20k", 150, (896, 896), [3584, 896], [0.5, 2.0], 80000, F, 1e-5, 0.95, 0.1, 1,
    ),
}  # fmt: skip

# Zero-label reduction as the configs' LoadAnnotations / dataset classes do it.
REDUCE_ZERO = {C: False, M: False, "cocostuff164k": False, "cocostuff10k": True, "nyu": True, "pascal_context": True}
REDUCE_ZERO["ade20k"] = True


def test_every_official_config_has_a_preset():
    assert set(EXPECTED) <= set(list_presets())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_fields_follow_the_official_config(name):
    cfg, preset = preset_config(name)
    dataset, k, crop, scale, ratio, iters, head, lr, decay, clip, batch = EXPECTED[name]
    assert (preset["dataset"], preset["head"], cfg.num_classes) == (dataset, head, k)
    assert cfg.reduce_zero_label == REDUCE_ZERO[dataset]
    assert (cfg.crop_size, cfg.img_scale, cfg.ratio_range, cfg.cat_max_ratio) == (
        crop,
        tuple(scale),
        tuple(ratio),
        0.75,
    )
    assert (cfg.iters, cfg.lr, cfg.layer_decay, cfg.clip_grad, cfg.batch_size) == (iters, lr, decay, clip, batch)
    assert (cfg.warmup_iters, cfg.warmup_ratio, cfg.sched, cfg.poly_power, cfg.min_lr) == (1500, 1e-6, "poly", 1.0, 0)
    assert (cfg.optimizer, cfg.weight_decay, cfg.layer_decay_rule) == ("adamw", 0.05, "segmentation")
    variant = MODEL_SPECS[cfg.model][0]
    assert variant == name.split("_")[2]  # the backbone of the right size
    assert cfg.layer_scale == (None if variant in ("h", "g") else 1.0)
    if head == "segformer":
        assert (cfg.decode_channels, cfg.aux_channels) == (256, 0)
    elif head == "upernet":
        assert (cfg.decode_channels, cfg.aux_channels, cfg.aux_weight) == (512, 256, 0.4)
    else:
        wide = dataset in ("ade20k", "cocostuff164k", "cocostuff10k")
        widths = (1024, 200, 32, 4096, 4096) if wide else (256, 100, 8, 1024, 2048)
        got = (cfg.decode_channels, cfg.num_queries, cfg.attn_heads, cfg.ffn_channels)
        assert (*got, preset.get("dec_ffn_channels", cfg.ffn_channels)) == widths
        assert (cfg.enc_layers, cfg.dec_layers, cfg.aux_channels, cfg.drop_path_rate) == (6, 9, 0, 0.5)


def test_test_time_settings_follow_the_official_configs():
    slide = {  # name: (crop, stride) of test_cfg mode='slide'
        "mask2former_internimage_h_896x896_80k_mapillary": ((896, 896), (512, 512)),
        "mask2former_internimage_h_1024x1024_80k_mapillary2cityscapes": ((1024, 1024), (512, 512)),
    }
    for name in EXPECTED:
        cfg, preset = preset_config(name)
        if name in slide:
            assert (cfg.test_mode, (cfg.test_crop, cfg.test_stride)) == ("slide", slide[name])
        else:
            assert cfg.test_mode == "whole", name
    assert get_preset("mask2former_internimage_h_480_40k_nyu")["test_scale"] == [640, 480]
    assert get_preset("mask2former_internimage_h_480_40k_pascal_context_59")["test_scale"] == [4096, 520]
    ms, _ = preset_config("mask2former_internimage_h_896_80k_cocostuff2ade20k_ms")
    assert ms.test_flip and ms.test_ratios == pytest.approx([768 / 896, 832 / 896, 1.0, 960 / 896, 1024 / 896])
    ss, _ = preset_config("mask2former_internimage_h_896_80k_cocostuff2ade20k_ss")
    assert {k: v for k, v in ms.to_dict().items() if k not in ("test_ratios", "test_flip")} == {
        k: v for k, v in ss.to_dict().items() if k not in ("test_ratios", "test_flip")
    }
    evals = {"mapillary2cityscapes": 4000, "_80k_mapillary": 8000, "cityscapes": 16000}
    for name in EXPECTED:
        for key, every in evals.items():
            if name.startswith(("upernet", "segformer")) and name.endswith(key):
                assert get_preset(name)["eval_every"] == every, name
                break


def build_from_preset(preset: dict) -> torch.nn.Module:
    """The segmentor a preset describes (``build_segmentor``'s choices, with the SegFormer head and ``dec_ffn``)."""
    backbone = internimage.create_model(
        preset["model"], num_classes=0, drop_path_rate=preset["drop_path_rate"], layer_scale=preset["layer_scale"]
    )
    k, head = preset["num_classes"], preset["head"]
    if head == "segformer":
        return build_segformer(backbone, k, channels=preset["decode_channels"])
    if head == "mask2former":
        return build_mask2former(
            backbone, k, dim=preset["decode_channels"], num_queries=preset["num_queries"], heads=preset["attn_heads"],
            hidden=preset["ffn_channels"], dec_hidden=preset.get("dec_ffn_channels"),
        )  # fmt: skip
    return build_upernet(backbone, k, channels=preset["decode_channels"], aux_channels=preset["aux_channels"])


# The zoo's #params (segmentation/configs/*/README.md); None: no figure released.
ZOO = {
    "upernet_internimage_t_512x1024_160k_cityscapes": 59e6,
    "upernet_internimage_s_512x1024_160k_cityscapes": 80e6,
    "upernet_internimage_b_512x1024_160k_cityscapes": 128e6,
    "upernet_internimage_l_512x1024_160k_cityscapes": 256e6,
    "upernet_internimage_xl_512x1024_160k_cityscapes": 368e6,
    "upernet_internimage_l_512x1024_160k_mapillary2cityscapes": 256e6,
    "upernet_internimage_xl_512x1024_160k_mapillary2cityscapes": 368e6,
    "segformer_internimage_l_512x1024_160k_mapillary2cityscapes": 220e6,
    "segformer_internimage_xl_512x1024_160k_mapillary2cityscapes": 330e6,
    "upernet_internimage_l_512x1024_80k_mapillary": 256e6,
    "upernet_internimage_xl_512x1024_80k_mapillary": 368e6,
    "segformer_internimage_l_512x1024_80k_mapillary": 220e6,
    "segformer_internimage_xl_512x1024_80k_mapillary": 330e6,
    "mask2former_internimage_h_896_80k_cocostuff164k": 1.31e9,
    "mask2former_internimage_h_512_40k_cocostuff164k_to_10k": 1.28e9,
    "mask2former_internimage_h_480_40k_nyu": 1.07e9,
    "mask2former_internimage_h_480_40k_pascal_context_59": 1.07e9,
    "mask2former_internimage_h_896_80k_cocostuff2ade20k_ms": 1.31e9,
    "mask2former_internimage_h_896x896_80k_mapillary": None,  # README: TODO
    "mask2former_internimage_h_1024x1024_80k_mapillary2cityscapes": None,
    "upernet_internimage_g_896_160k_ade20k": None,  # not released
}


# Where the zoo's figure is not the configured model's: our count (the config's widths, checked above) and why.
ZOO_DIFFERS = {
    # 1.07B = the InternImage-H backbone alone (1073.1M); the 256-wide Mask2Former head adds 20.8M.
    "mask2former_internimage_h_480_40k_nyu": (1093.9e6, "zoo counts the backbone only"),
    "mask2former_internimage_h_480_40k_pascal_context_59": (1093.9e6, "zoo counts the backbone only"),
    # The same model as mask2former_internimage_h_896_80k_cocostuff164k (171 classes, 1024 wide), listed at 1.31B.
    "mask2former_internimage_h_512_40k_cocostuff164k_to_10k": (1313.5e6, "zoo 1.28B, same model as the 164k 1.31B"),
}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_full_size_parameter_counts_match_the_zoo(name):
    with torch.device("meta"):
        model = build_from_preset(get_preset(name))
    count = sum(p.numel() for p in model.parameters())
    print(f"{name}: {count / 1e6:.1f}M")
    if name in ZOO_DIFFERS:
        ours, why = ZOO_DIFFERS[name]
        assert count == pytest.approx(ours, rel=1e-4), f"{name}: {count / 1e6:.1f}M ({why})"
        if "backbone" in why:
            backbone = sum(p.numel() for p in model.backbone.parameters())
            assert backbone == pytest.approx(ZOO[name], rel=0.005)
    elif ZOO[name] is not None:
        assert count == pytest.approx(ZOO[name], rel=0.005), f"{name}: {count / 1e6:.1f}M"


def test_inaturalist_preset_follows_the_official_yaml():
    from internimage.classification import ClassificationConfig

    cfg = ClassificationConfig.from_preset("internimage_h_22ktoinat18_384")
    assert (cfg.model, cfg.num_classes, cfg.img_size, cfg.drop_path_rate) == (
        "internimage_h_jointto22k_384",
        8142,
        384,
        0.6,
    )
    assert (cfg.epochs, cfg.warmup_epochs, cfg.lr, cfg.lr_base_batch, cfg.warmup_lr, cfg.min_lr) == (
        100,
        0,
        2e-5,
        512,
        0,
        0,
    )
    assert (cfg.weight_decay, cfg.layer_decay, cfg.offset_lr_mul, cfg.ema, cfg.label_smoothing) == (
        0.05,
        1.0,
        1.0,
        False,
        0.3,
    )
    assert cfg.mixup == cfg.cutmix == cfg.reprob == 0 and cfg.grad_checkpointing
    with torch.device("meta"):
        model = internimage.create_model(cfg.model, num_classes=cfg.num_classes)
    assert model.head.out_features == 8142
