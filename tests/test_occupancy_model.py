"""BEVFormer-Occ model: official checkpoint layout, geometry (projection, ego-motion alignment), training, video state.

Expected numbers in this file are written from the official configuration/code and worked out by hand, never
read back from the modules under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from internimage.occupancy.models import (
    BEVFormerOccHead,
    GridMask,
    SpatialCrossAttention,
    TransformerOcc,
    bev_reference_points_3d,
    bev_shift,
    build_bevformer_occ,
    build_bevformer_occ_tiny,
    point_sampling,
    rotate_bev,
    union2one,
)


# --------------------------------------------------------------------------------------------------------- layout
def _official_layout() -> dict[str, tuple[int, ...]]:
    """Key -> shape of an official ``bevformer_intern-s_occ`` checkpoint, written from the original modules.

    InternImage (mmdet backbone, out_indices 1-3, post_norm=True so no level norms, layer_scale -> gamma1/2):
    stem conv(3->40)+LN, conv(40->80)+LN; blocks of norm1, DCNv3 (dw_conv 3x3 + LN, offset/mask linears with
    group*9*2 / group*9 outputs, input/output proj), norm2, MLP x4; downsample conv(c->2c, no bias)+LN on levels
    0-2. FPN [160, 320, 640] -> 256 with 4 outputs. TransformerOcc: 4 BEVFormerLayers (TSA: 8 heads, 1 level,
    4 points, 2 BEVs -> offsets 2*8*1*4*2=128 from 512; SCA: 8 heads, 4 levels, 8 points -> 512 offsets),
    FFN 256->512->256, 3 LNs; 3D decoder 256/16=16 -> 32 -> 32 (Conv3d no bias + BN3d); predicter 32->64->18;
    can_bus_mlp 18->128->256 + LN; level/camera embeddings. Head: 200x200 BEV queries and 128+128 positions.
    """
    s: dict[str, tuple[int, ...]] = {}
    bb = "img_backbone."
    s |= {
        bb + "patch_embed.conv1.weight": (40, 3, 3, 3),
        bb + "patch_embed.conv1.bias": (40,),
        bb + "patch_embed.norm1.1.weight": (40,),
        bb + "patch_embed.norm1.1.bias": (40,),
        bb + "patch_embed.conv2.weight": (80, 40, 3, 3),
        bb + "patch_embed.conv2.bias": (80,),
        bb + "patch_embed.norm2.1.weight": (80,),
        bb + "patch_embed.norm2.1.bias": (80,),
    }
    for level, (depth, groups) in enumerate(zip((4, 4, 21, 4), (5, 10, 20, 40), strict=True)):
        c = 80 * 2**level
        for b in range(depth):
            p = f"{bb}levels.{level}.blocks.{b}."
            s[p + "gamma1"] = (c,)
            s[p + "gamma2"] = (c,)
            for name, shape in (
                ("norm1.0", None),
                ("dcn.dw_conv.0", (c, 1, 3, 3)),
                ("dcn.dw_conv.1.1", None),
                ("dcn.offset", (groups * 9 * 2, c)),
                ("dcn.mask", (groups * 9, c)),
                ("dcn.input_proj", (c, c)),
                ("dcn.output_proj", (c, c)),
                ("norm2.0", None),
                ("mlp.fc1", (4 * c, c)),
                ("mlp.fc2", (c, 4 * c)),
            ):
                s[p + name + ".weight"] = (c,) if shape is None else shape
                s[p + name + ".bias"] = (shape[0] if shape is not None else c,)
        if level < 3:
            s[f"{bb}levels.{level}.downsample.conv.weight"] = (2 * c, c, 3, 3)
            s[f"{bb}levels.{level}.downsample.norm.1.weight"] = (2 * c,)
            s[f"{bb}levels.{level}.downsample.norm.1.bias"] = (2 * c,)
    for i, cin in enumerate((160, 320, 640)):
        s[f"img_neck.lateral_convs.{i}.conv.weight"] = (256, cin, 1, 1)
        s[f"img_neck.lateral_convs.{i}.conv.bias"] = (256,)
    for i in range(4):
        s[f"img_neck.fpn_convs.{i}.conv.weight"] = (256, 256, 3, 3)
        s[f"img_neck.fpn_convs.{i}.conv.bias"] = (256,)
    t = "pts_bbox_head.transformer."
    for layer in range(4):
        p = f"{t}encoder.layers.{layer}."
        linears = {
            "attentions.0.sampling_offsets": (128, 512),
            "attentions.0.attention_weights": (64, 512),
            "attentions.0.value_proj": (256, 256),
            "attentions.0.output_proj": (256, 256),
            "attentions.1.deformable_attention.sampling_offsets": (512, 256),
            "attentions.1.deformable_attention.attention_weights": (256, 256),
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
        for name in ("weight", "bias", "running_mean", "running_var"):
            s[f"{t}decoder.{i}.bn.{name}"] = (cout,)
        s[f"{t}decoder.{i}.bn.num_batches_tracked"] = ()
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


def test_official_checkpoint_layout_loads_strictly():
    with torch.device("meta"):
        model = build_bevformer_occ()
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    official = _official_layout()
    assert sorted(set(ours) - set(official)) == []
    assert sorted(set(official) - set(ours)) == []
    assert ours == official
    assert sum(k.startswith("img_backbone.") for k in official) == 743  # 8 stem + 33 blocks x 22 + 3 x 3 downsample
    assert ours["img_backbone.levels.2.blocks.20.dcn.offset.weight"] == (360, 320)
    assert ours["img_backbone.levels.1.downsample.conv.weight"] == (320, 160, 3, 3)
    state = {
        k: torch.empty(shape, device="meta", dtype=torch.long if k.endswith("num_batches_tracked") else torch.float32)
        for k, shape in official.items()
    }
    result = model.load_state_dict(state, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert sum(p.numel() for p in model.parameters()) == 64_818_930


# ------------------------------------------------------------------------------------------------------- geometry
def _camera(f: float, cx: float, cy: float, forward, right, centre=(0.0, 0.0, 0.0)) -> torch.Tensor:
    """lidar2img of a pinhole camera (x right, y down, z forward) at ``centre`` looking along ``forward``."""
    rot = torch.tensor([right, [0.0, 0.0, -1.0], forward])  # rows: camera axes in the lidar frame
    k = torch.tensor([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])
    m = torch.eye(4)
    m[:3, :3] = k @ rot
    m[:3, 3] = k @ (-rot @ torch.tensor(centre))
    return m


def test_point_sampling_hand_case():
    # 2 x 2 BEV over [-2, 2]^2, z in [0, 2], 2 anchors: cell centres x, y in {-1, 1}, heights 0.5 and 1.5.
    ref = bev_reference_points_3d(2, 2, 2.0, 2)
    pc = (-2.0, -2.0, 0.0, 2.0, 2.0, 2.0)
    f, cx, cy, img_shape = 10.0, 20.0, 15.0, (30, 40)
    cams = torch.stack(
        [
            _camera(f, cx, cy, (1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),  # looks along +x
            _camera(f, cx, cy, (-1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),  # looks along -x
            _camera(f, cx, cy, (0.0, 1.0, 0.0), (1.0, 0.0, 0.0)),  # looks along +y
            _camera(f, cx, cy, (1.0, 0.0, 0.0), (0.0, -1.0, 0.0), centre=(-1.0, 0.0, 0.0)),  # +x, 1 m back
            torch.zeros(4, 4),  # degenerate: depth 0 everywhere -> sees nothing
            torch.zeros(4, 4),
        ]
    )[None]
    uv, mask = point_sampling(ref, pc, cams, img_shape)
    assert uv.shape == (1, 6, 4, 2, 2) and mask.shape == (1, 6, 4, 2)
    # Queries: 0 = (x -1, y -1), 1 = (1, -1), 2 = (-1, 1), 3 = (1, 1).
    # Cam 0, point (1, -1, 0.5): camera (right 1, down -0.5, depth 1) -> pixel (30, 10) -> (0.75, 1/3).
    torch.testing.assert_close(uv[0, 0, 1, 0], torch.tensor([0.75, 1 / 3]))
    # Cam 0, (1, 1, 0.5): right -1 -> (10, 10) -> (0.25, 1/3); (1, -1, 1.5): down -1.5 -> v = 0, on the edge: out.
    torch.testing.assert_close(uv[0, 0, 3, 0], torch.tensor([0.25, 1 / 3]))
    torch.testing.assert_close(uv[0, 0, 1, 1], torch.tensor([0.75, 0.0]))
    assert mask[0, 0].tolist() == [[False, False], [True, False], [False, False], [True, False]]
    # Cam 1 mirrors cam 0 onto x = -1; cam 2 sees y = +1 ((1, 1, .5) -> (30, 10), (-1, 1, .5) -> (10, 10)).
    assert mask[0, 1].tolist() == [[True, False], [False, False], [True, False], [False, False]]
    torch.testing.assert_close(uv[0, 1, 0, 0], torch.tensor([0.25, 1 / 3]))
    torch.testing.assert_close(uv[0, 2, 3, 0], torch.tensor([0.75, 1 / 3]))
    torch.testing.assert_close(uv[0, 2, 2, 0], torch.tensor([0.25, 1 / 3]))
    # Cam 3 from x = -1: (1, -1, 0.5) at depth 2 -> (10 * 1 / 2 + 20, 10 * -0.5 / 2 + 15) = (25, 12.5); the x = -1
    # pillars sit at depth 0 (not in front); (1, -1, 1.5) -> v = 10 * -1.5 / 2 + 15 = 7.5 -> inside.
    torch.testing.assert_close(uv[0, 3, 1, 0], torch.tensor([25 / 40, 12.5 / 30]))
    torch.testing.assert_close(uv[0, 3, 1, 1], torch.tensor([25 / 40, 7.5 / 30]))
    assert mask[0, 3].tolist() == [[False, False], [True, True], [False, False], [True, True]]
    assert not mask[0, 4:].any()
    # ego2lidar is applied before lidar2img: with lidar x = ego x + 2 the x = -1 pillars sit where x = 1 sat.
    shift = torch.eye(4)
    shift[0, 3] = 2.0  # lidar x = ego x + 2
    _, mask_shifted = point_sampling(ref, pc, cams, img_shape, ego2lidar=shift)
    assert mask_shifted[0, 0, 0, 0] and mask_shifted[0, 0, 2, 0]  # (-1, -1, .5) -> lidar (1, -1, .5): visible


def test_bev_shift_hand_cases():
    grid, h, w = (0.5, 0.5), 100, 100
    cb = torch.zeros(3, 18, dtype=torch.float64)
    cb[0, 0] = 2.0  # 2 m along global x, heading 0: straight ahead -> +y rows of the BEV: 2 / 0.5 / 100
    cb[1, 1], cb[1, -2] = 2.0, math.pi / 2  # 2 m along global y while heading +y: also straight ahead
    cb[2, 1] = 2.0  # 2 m along global y while heading x: sideways -> x shift -0.04
    shift = bev_shift(cb, grid, h, w)
    torch.testing.assert_close(shift, torch.tensor([[0.0, 0.04], [0.0, 0.04], [-0.04, 0.0]]), atol=1e-7, rtol=0)
    assert not bev_shift(cb, grid, h, w, use_shift=False).any()


def test_rotate_prev_bev_hot_cell():
    bev = torch.zeros(2, 1, 4, 4)
    bev[0, 0, 1, 3] = 1.0
    bev[1, 0, 0, 1] = 1.0
    # 90 degrees about the map centre (2, 2): output pixel centre p reads input R(-90) p, i.e. (x, y) <- (-y, x) in
    # centred coordinates; the input hot cell (col 3, row 1) = (1.5, -0.5) lands at (-0.5, -1.5) = (col 1, row 0).
    out = rotate_bev(bev[:1], torch.tensor([90.0]), (2.0, 2.0))
    expected = torch.zeros(1, 1, 4, 4)
    expected[0, 0, 0, 1] = 1.0
    torch.testing.assert_close(out, expected)
    # About (1, 1) instead: centred hot cell (col 1, row 0) = (-0.5, -1.5), centre (-1, -1) -> (col 0, row 0).
    out = rotate_bev(bev[1:], torch.tensor([90.0]), (1.0, 1.0))
    expected = torch.zeros(1, 1, 4, 4)
    expected[0, 0, 0, 0] = 1.0
    torch.testing.assert_close(out, expected)
    # Zero angle is the identity; per-sample angles.
    torch.testing.assert_close(rotate_bev(bev, torch.tensor([0.0, 0.0]), (2.0, 2.0)), bev)


def test_union2one_hand_case():
    cb = torch.zeros(2, 3, 18, dtype=torch.float64)
    cb[:, :, :3] = torch.tensor([[10.0, 20.0, 1.0], [12.0, 21.0, 1.0], [15.0, 25.0, 2.0]])
    cb[:, :, 3:7] = 0.5
    cb[:, :, -2] = torch.tensor([0.5, 0.7, 0.8])
    cb[:, :, -1] = torch.tensor([30.0, 40.0, 45.0])
    exists = torch.tensor([[True, True, True], [True, True, False]])
    rel, out_exists = union2one(cb, exists)
    assert out_exists.tolist() == [[False, True, True], [False, True, False]]
    assert rel[0, 0, :3].tolist() == [0.0, 0.0, 0.0] and rel[0, 0, -1] == 0.0
    assert rel[0, 1, :3].tolist() == [2.0, 1.0, 0.0] and rel[0, 1, -1] == 10.0
    assert rel[0, 2, :3].tolist() == [3.0, 4.0, 1.0] and rel[0, 2, -1] == 5.0
    assert rel[1, 2, :3].tolist() == [0.0, 0.0, 0.0] and rel[1, 2, -1] == 0.0  # new scene
    assert (rel[..., 3:7] == 0.5).all() and rel[..., -2].tolist() == cb[..., -2].tolist()
    assert cb[0, 1, 0] == 12.0  # input untouched


def test_spatial_cross_attention_rebatch_equals_dense():
    torch.manual_seed(0)
    sca = SpatialCrossAttention(embed_dims=16, num_cams=3, num_heads=2, num_levels=2, num_points=4).eval()
    n, q, d, shapes = 2, 7, 2, [(4, 5), (2, 3)]
    query = torch.randn(n, q, 16)
    value = torch.randn(n * 3, 26, 16)
    refs = torch.rand(n, 3, q, d, 2)
    mask = torch.rand(n, 3, q, d) > 0.6
    out = sca(query, value, refs, mask, shapes)
    # Dense reference: every camera attends every query; keep the ones it sees, average over those cameras.
    dense = sca.deformable_attention(query.repeat_interleave(3, 0), value, refs.reshape(n * 3, q, d, 2), shapes)
    hits = mask.any(-1)
    summed = (dense.view(n, 3, q, 16) * hits[..., None]).sum(1)
    expected = sca.output_proj(summed / hits.sum(1).clamp(min=1)[..., None]) + query
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("decoder", ["3d", "conv", "linear"])
def test_decoder_axis_orders(decoder):
    # The original returns (N, bev_w, bev_h, Z, classes) from the 3D decoder, (N, bev_h, bev_w, Z, classes) else.
    t = TransformerOcc(
        embed_dims=16,
        num_feature_levels=1,
        num_cams=1,
        pillar_h=4,
        num_classes=5,
        out_dim=8,
        decoder=decoder,
        num_layers=1,
        num_heads=2,
        num_points=2,
        num_points_in_pillar=2,
        tsa_num_points=1,
        feedforward_channels=8,
    ).eval()
    out = t.decode(torch.randn(2, 3 * 5, 16), 3, 5)
    assert out.shape == ((2, 5, 3, 4, 5) if decoder == "3d" else (2, 3, 5, 4, 5))


# --------------------------------------------------------------------------------------------------- full model
def _rig(n: int, h: int = 64, w: int = 96) -> torch.Tensor:
    """(n, 6, 4, 4) six cameras at the ego origin, 1.5 m up, looking out every 60 degrees."""
    mats = []
    for k in range(6):
        a = math.radians(60.0 * k)
        fwd, right = (math.cos(a), math.sin(a), 0.0), (math.sin(a), -math.cos(a), 0.0)
        mats.append(_camera(w / 2, w / 2, h / 2, fwd, right, centre=(0.0, 0.0, 1.5)))
    return torch.stack(mats).expand(n, 6, 4, 4).clone()


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_bevformer_occ_tiny()


def test_training_step_loss_and_gradients(tiny):
    torch.manual_seed(1)
    model = tiny.train()
    model.zero_grad()
    n, t = 1, 2
    img = torch.randn(n, t, 6, 3, 64, 96)
    can_bus = torch.zeros(n, t, 18)
    can_bus[:, :, :3] = torch.tensor([[100.0, 200.0, 0.0], [101.0, 200.5, 0.0]])
    can_bus[:, :, -2] = torch.tensor([0.3, 0.35])
    can_bus[:, :, -1] = can_bus[:, :, -2] * 180 / math.pi
    labels = torch.randint(0, 18, (n, 50, 50, 8))
    lidar2img = _rig(n)[:, None].expand(n, t, 6, 4, 4)
    losses = model(img, lidar2img, can_bus, (64, 96), torch.ones(n, t, dtype=torch.bool), labels)
    assert set(losses) == {"loss_occ"} and torch.isfinite(losses["loss_occ"])
    assert abs(losses["loss_occ"].item() - math.log(18)) < 1.5
    losses["loss_occ"].backward()
    layer = model.pts_bbox_head.transformer.encoder.layers[0]
    for p in (
        model.img_backbone.patch_embed.conv1.weight,
        model.img_neck.lateral_convs[0].conv.weight,
        layer.attentions[0].value_proj.weight,  # temporal self-attention
        layer.attentions[1].deformable_attention.value_proj.weight,  # spatial cross-attention into the images
        model.pts_bbox_head.bev_embedding.weight,
        model.pts_bbox_head.transformer.predicter[2].weight,
    ):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert model.training  # the no-grad history pass restores training mode


def test_training_mixed_history_and_mask(tiny):
    torch.manual_seed(2)
    model = tiny.train()
    model.pts_bbox_head.use_mask = True
    try:
        n, t = 2, 2
        labels = torch.randint(0, 18, (n, 50, 50, 8))
        mask = torch.zeros(n, 50, 50, 8, dtype=torch.bool)
        mask[:, :10] = True
        losses = model.forward_train(
            torch.randn(n, t, 6, 3, 64, 96),
            _rig(n)[:, None].expand(n, t, 6, 4, 4),
            torch.zeros(n, t, 18),
            prev_exists=torch.tensor([[True, True], [True, False]]),
            voxel_semantics=labels,
            mask_camera=mask,
        )
        assert torch.isfinite(losses["loss_occ"])
    finally:
        model.pts_bbox_head.use_mask = False


def test_predict_video_state_resets_on_new_scene(tiny):
    model = tiny
    model.reset_video_state()
    seen = []
    hook = model.pts_bbox_head.register_forward_pre_hook(lambda m, args: seen.append((args[2].clone(), args[5])))
    try:
        torch.manual_seed(3)
        img = torch.randn(1, 6, 3, 64, 96)
        rig = _rig(1)

        def can(x, y, deg):
            c = torch.zeros(1, 18, dtype=torch.float64)
            c[0, :3] = torch.tensor([x, y, 0.0])
            c[0, -2], c[0, -1] = math.radians(deg), deg
            return c

        first = model.predict(img, rig, can(500.0, 600.0, 30.0), "scene-a", return_logits=True)
        second = model.predict(img, rig, can(501.0, 602.0, 35.0), "scene-a", return_logits=True)
        third = model.predict(img, rig, can(10.0, 10.0, 80.0), "scene-b", return_logits=True)
        model.reset_video_state()
        fresh = model.predict(img, rig, can(10.0, 10.0, 80.0), "scene-b", return_logits=True)
    finally:
        hook.remove()
    assert first["occ"].shape == (1, 50, 50, 8) and first["occ"].dtype == torch.uint8
    assert first["logits"].shape == (1, 50, 50, 8, 18)
    assert seen[0][1] is None and seen[1][1] is not None and seen[2][1] is None
    torch.testing.assert_close(seen[0][0][0, [0, 1, 2, 17]], torch.zeros(4))
    torch.testing.assert_close(seen[1][0][0, [0, 1, 2, 17]], torch.tensor([1.0, 2.0, 0.0, 5.0]))
    torch.testing.assert_close(seen[1][0][0, 16], torch.tensor(math.radians(35.0), dtype=torch.float32))
    assert not torch.equal(first["logits"], second["logits"])  # the history changed the prediction
    torch.testing.assert_close(third["logits"], fresh["logits"])  # the new scene started from scratch
    torch.testing.assert_close(first["occ"], first["logits"].argmax(-1).to(torch.uint8))
    assert model.prev_frame_info["scene_token"] == ["scene-b"]


def test_video_test_mode_off_never_uses_history(tiny):
    model = tiny
    model.reset_video_state()
    model.video_test_mode = False
    try:
        img, rig, cb = torch.randn(1, 6, 3, 64, 96), _rig(1), torch.zeros(1, 18)
        a = model.predict(img, rig, cb, "s", return_logits=True)["logits"]
        b = model.predict(img, rig, cb, "s", return_logits=True)["logits"]
    finally:
        model.video_test_mode = True
    torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------------------------ augmentation
def test_grid_mask_training_only():
    gm = GridMask(prob=1.0)
    x = torch.ones(2, 3, 32, 48)
    torch.manual_seed(0)
    out = gm.train()(x)
    assert set(out.unique().tolist()) <= {0.0, 1.0} and 0.1 < out.mean() < 0.95
    assert torch.equal(out[0], out[1])  # one mask for the batch
    assert torch.equal(gm.eval()(x), x)


# ---------------------------------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_value_error(tiny):
    model = tiny
    with pytest.raises(ValueError, match="img must be"):
        model.forward_train(torch.zeros(1, 2, 5, 3, 64, 96), torch.zeros(1, 2, 5, 4, 4), torch.zeros(1, 2, 18))
    with pytest.raises(ValueError, match="can_bus must be"):
        model.predict(torch.zeros(1, 6, 3, 64, 96), _rig(1), torch.zeros(1, 17), "s")
    with pytest.raises(ValueError, match="scene_token"):
        model.predict(torch.zeros(2, 6, 3, 64, 96), _rig(2), torch.zeros(2, 18), ["a", "b", "c"])
    head: BEVFormerOccHead = model.pts_bbox_head
    preds = {"occ": torch.zeros(1, 2, 2, 2, 18)}
    with pytest.raises(ValueError, match="voxel_semantics must lie"):
        head.loss(torch.full((1, 2, 2, 2), 18), None, preds)
    with pytest.raises(ValueError, match="multiple of"):
        build_bevformer_occ_tiny(num_points=3)
    with pytest.raises(ValueError, match="union2one|can_bus must be"):
        union2one(torch.zeros(2, 18))
