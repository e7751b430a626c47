"""DINO with InternImage / CB-InternImage: parts against hand-computable results, official key layout, counts."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from internimage import create_model
from internimage.detection.models.dino import (
    CdnQueryGenerator,
    build_cb_dino,
    build_dino,
    generalized_iou,
    hungarian_assign,
    match_cost,
    sigmoid_focal_loss,
)
from internimage.detection.models.dino.matching import box_cxcywh_to_xyxy, inverse_sigmoid

pytest.importorskip("scipy")

K = 3  # classes of the tiny detectors
D, HEADS, HIDDEN, Q, ENC, DEC = 32, 2, 64, 20, 1, 2
TINY = dict(
    neck_channels=D, num_queries=Q, enc_layers=ENC, dec_layers=DEC, heads=HEADS, hidden=HIDDEN, num_dn_queries=6
)


def tiny_dino(cb: bool = False, seed: int = 0, classes: int = K):
    torch.manual_seed(seed)
    build = build_cb_dino if cb else build_dino
    return build("internimage_test_32", classes, backbone_overrides=dict(layer_scale=1.0), **TINY)


# ------------------------------------------------------------------------------------------------ matching
def test_generalized_iou_by_hand():
    a = torch.tensor([[0.0, 0, 2, 2]], dtype=torch.float64)
    b = torch.tensor([[1.0, 1, 3, 3], [4, 0, 5, 1]], dtype=torch.float64)
    # Overlap 1, union 7, hull 9; disjoint: union 5, hull 5 * 2 = 10.
    expected = torch.tensor([[1 / 7 - 2 / 9, 0 - (10 - 5) / 10]], dtype=torch.float64)
    assert torch.allclose(generalized_iou(a, b), expected, atol=1e-12)


def test_match_cost_entries_follow_the_mmdet_cost_formulas():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, K, generator=g, dtype=torch.float64)
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.3, 0.6, 0.1, 0.1], [0.7, 0.2, 0.3, 0.2], [0.1, 0.9, 0.1, 0.1]])
    boxes = boxes.double()
    gt = torch.tensor([[10.0, 20, 50, 60], [0, 0, 30, 30]], dtype=torch.float64)
    labels = torch.tensor([2, 0])
    h, w = 80, 100
    cost = match_cost(logits, boxes, labels, gt, (h, w))
    for q, j in itertools.product(range(4), range(2)):
        p = 1 / (1 + math.exp(-logits[q, labels[j]].item()))
        focal = 0.25 * (1 - p) ** 2 * -math.log(p + 1e-12) - 0.75 * p**2 * -math.log(1 - p + 1e-12)
        x0, y0, x1, y1 = gt[j].tolist()
        tgt = [(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h]
        l1 = sum(abs(a - b) for a, b in zip(boxes[q].tolist(), tgt))
        cx, cy, bw, bh = boxes[q].tolist()
        corners = [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]
        pb = torch.tensor([corners], dtype=torch.float64)
        giou = generalized_iou(pb, gt[j : j + 1]).item()
        assert cost[q, j].item() == pytest.approx(2 * focal + 5 * l1 - 2 * giou, abs=1e-9)


@pytest.mark.parametrize("shape", [(5, 3), (4, 4), (3, 5), (6, 1)])
def test_hungarian_assignment_is_the_brute_force_optimum(shape):
    g = torch.Generator().manual_seed(sum(shape))
    for _ in range(5):
        cost = torch.rand(shape, generator=g, dtype=torch.float64)
        rows, cols = hungarian_assign(cost)
        q, m = shape
        if q >= m:  # every injective gt -> query map
            best = min(sum(cost[r, c].item() for c, r in enumerate(p)) for p in itertools.permutations(range(q), m))
        else:  # every injective query -> gt map
            best = min(sum(cost[r, c].item() for r, c in enumerate(p)) for p in itertools.permutations(range(m), q))
        assert len(rows) == min(shape) and len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)
        assert cost[rows, cols].sum().item() == pytest.approx(best, abs=1e-12)
    with pytest.raises(ValueError, match="NaN or inf"):
        hungarian_assign(torch.tensor([[0.0, float("nan")]]))


def test_sigmoid_focal_loss_by_hand():
    logits = torch.tensor([[0.3, -1.2], [2.0, 0.5]], dtype=torch.float64)
    labels = torch.tensor([1, 2])  # second row is background (label == K)
    total = 0.0
    for i, j in itertools.product(range(2), range(2)):
        p = 1 / (1 + math.exp(-logits[i, j].item()))
        t = 1.0 if labels[i].item() == j else 0.0
        ce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
        pt = (1 - p) * t + p * (1 - t)
        total += ce * (0.25 * t + 0.75 * (1 - t)) * pt**2
    assert sigmoid_focal_loss(logits, labels, avg_factor=3.0).item() == pytest.approx(total / 3, abs=1e-12)


# ------------------------------------------------------------------------------------------------ denoising
def test_denoising_queries_layout_and_mask_without_noise():
    emb = torch.nn.Embedding(K, 4).double()
    boxes = [
        torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.3, 0.3, 0.1, 0.2]]).double(),
        torch.tensor([[0.6, 0.4, 0.2, 0.2]]).double(),
    ]
    labels = [torch.tensor([2, 0]), torch.tensor([1])]
    gen = CdnQueryGenerator(K, num_queries=5, label_noise=0.0, box_noise=0.0, num_dn_queries=5)
    lab, box, mask, meta = gen(boxes, labels, emb)
    # single_pad = 2 boxes, groups = 5 // 2 = 2, pad = 2 copies x 2 boxes x 2 groups = 8.
    assert (meta.pad_size, meta.num_groups, meta.single_pad) == (8, 2, 2)
    assert lab.shape == (2, 8, 4) and box.shape == (2, 8, 4) and mask.shape == (13, 13)
    for copy in range(4):  # positive/negative copies of both groups hold the clean boxes without noise
        for i, (b, lb) in enumerate(zip(boxes, labels)):
            for j in range(len(lb)):
                assert torch.equal(lab[i, copy * 2 + j], emb.weight[lb[j]].detach())
                assert torch.allclose(box[i, copy * 2 + j], inverse_sigmoid(b[j], 1e-3))
    assert not lab[1, 1::2].any() and not box[1, 1::2].any()  # image 1 has one box: its second slots are padding
    for r, c in itertools.product(range(13), range(13)):
        # Matching queries never see denoising queries; a group (4 queries) sees only itself and the matching part.
        blocked = c < 8 if r >= 8 else c < 8 and c // 4 != r // 4
        assert mask[r, c].item() == blocked, (r, c)


def test_denoising_noise_stays_within_the_positive_and_negative_bands():
    g = torch.Generator().manual_seed(0)
    emb = torch.nn.Embedding(50, 4)
    box = torch.tensor([[0.5, 0.5, 0.2, 0.1]], dtype=torch.float64)
    gen = CdnQueryGenerator(50, num_queries=1, label_noise=0.5, box_noise=1.0, num_dn_queries=2000)
    lab, noisy, _, meta = gen([box], [torch.tensor([7])], emb, generator=g)
    boxes = noisy[0].sigmoid()
    corners = box_cxcywh_to_xyxy(boxes)
    shift = (corners - box_cxcywh_to_xyxy(box)).abs() / torch.tensor([0.1, 0.05, 0.1, 0.05], dtype=torch.float64)
    # Copies alternate positive / negative (one box per copy). Where a negative's corners crossed, its width or
    # height went negative and inverse_sigmoid clamped it to 1e-3: the corners are not recoverable there.
    kept = (boxes[:, 2:] > 2e-3).all(-1)
    pos, neg = shift[0::2], shift[1::2][kept[1::2]]
    assert kept[0::2].all() and len(neg) > 500
    assert meta.num_groups == 2000 and pos.max() < 1 + 1e-6 and neg.min() > 1 - 1e-6 and neg.max() < 2 + 1e-6
    changed = (lab[0] != emb.weight[7]).any(-1).double().mean().item()
    assert abs(changed - 0.25 * 49 / 50) < 0.03  # label flipped with p = 0.5 / 2, to one of 50 classes


# ------------------------------------------------------------------------------------------------ refinement
def test_look_forward_twice_refinement_float64():
    model = tiny_dino().double().eval()
    head = model.bbox_head
    with torch.no_grad():  # non-zero box branches (their last layer starts at zero)
        for p in head.reg_branches.parameters():
            p.normal_(0, 0.1)
    raw, captured = [], []
    hooks = [
        layer.register_forward_hook(lambda m, a, out: raw.append(out)) for layer in head.transformer.decoder.layers
    ]
    hooks.append(head.transformer.register_forward_hook(lambda m, a, out: captured.append(out)))
    feats = model.features(torch.randn(1, 3, 64, 96, dtype=torch.float64))[-1]
    classes, boxes, _, _, _ = head(feats)
    for h in hooks:
        h.remove()
    refs = captured[0][1]
    norm = head.transformer.decoder.norm
    for lid in range(DEC):
        # Entry l + 1 is layer l's refinement of entry l, from the un-normalised layer output.
        expected = (head.reg_branches[lid](raw[lid]) + inverse_sigmoid(refs[lid], 1e-3)).sigmoid()
        assert torch.allclose(refs[lid + 1], expected, atol=1e-12)
        # The prediction of layer l: its branch on the normalised output, offset from the refined box of layer l - 1.
        pred = (head.reg_branches[lid](norm(raw[lid])) + inverse_sigmoid(refs[lid], 1e-3)).sigmoid()
        assert torch.allclose(boxes[lid], pred, atol=1e-12)
    # Look forward twice: layer 1's boxes get gradient into reg_branches[0] through the undetached refined box; the
    # box fed to layer 1 is detached, so that path is the whole gradient (Deformable DETR's detached boxes give 0).
    w0 = head.reg_branches[0][-1].weight
    (g_model,) = torch.autograd.grad(boxes[1].sum(), w0)
    ref1 = (head.reg_branches[0](raw[0].detach()) + inverse_sigmoid(refs[0].detach(), 1e-3)).sigmoid()
    pred1 = (head.reg_branches[1](norm(raw[1].detach())) + inverse_sigmoid(ref1, 1e-3)).sigmoid()
    (g_hand,) = torch.autograd.grad(pred1.sum(), w0)
    assert g_model.abs().sum() > 0 and torch.allclose(g_model, g_hand, atol=1e-10)


# ------------------------------------------------------------------------------------------------ official layout
def _msda(sd: dict, prefix: str) -> None:
    # mmcv.ops.MultiScaleDeformableAttention(embed_dims=D, num_heads=HEADS, num_levels=4, num_points=4)
    n = HEADS * 4 * 4
    sd[prefix + "sampling_offsets.weight"], sd[prefix + "sampling_offsets.bias"] = (
        torch.randn(n * 2, D),
        torch.randn(n * 2),
    )
    sd[prefix + "attention_weights.weight"], sd[prefix + "attention_weights.bias"] = torch.randn(n, D), torch.randn(n)
    for name in ("value_proj", "output_proj"):
        sd[f"{prefix}{name}.weight"], sd[f"{prefix}{name}.bias"] = torch.randn(D, D), torch.randn(D)


def _ffn_norms(sd: dict, prefix: str, norms: int) -> None:
    # mmcv FFN(num_fcs=2): layers.0 = Sequential(Linear, ReLU, Dropout), layers.1 = Linear; LN per 'norm' op.
    sd[prefix + "ffns.0.layers.0.0.weight"], sd[prefix + "ffns.0.layers.0.0.bias"] = (
        torch.randn(HIDDEN, D),
        torch.randn(HIDDEN),
    )
    sd[prefix + "ffns.0.layers.1.weight"], sd[prefix + "ffns.0.layers.1.bias"] = torch.randn(D, HIDDEN), torch.randn(D)
    for i in range(norms):
        sd[f"{prefix}norms.{i}.weight"], sd[f"{prefix}norms.{i}.bias"] = torch.randn(D), torch.randn(D)


def official_dino_state(cb: bool = False, classes: int = K) -> dict[str, torch.Tensor]:
    """Names and shapes of the official DINO (mmdet ``DINO``/``CBDINO`` + ``DINOHead`` + ``DinoTransformer``) for the
    tiny config, written from the mmcv 1.x / mmdet 2.x module definitions and the official configs."""
    sd: dict[str, torch.Tensor] = {}
    body = create_model("internimage_test_32", layer_scale=1.0).state_dict()
    backbone = {k: v for k, v in body.items() if k.startswith(("patch_embed.", "levels."))}
    chans = [16 * 2**i for i in range(4)]
    if cb:  # CBInternImage: assisting cb_modules.0, lead cb_modules.1 (stem deleted, gamma0..3), cb_linears.i.j
        for k, v in backbone.items():
            sd[f"backbone.cb_modules.0.{k}"] = torch.randn_like(v)
            if not k.startswith("patch_embed."):
                sd[f"backbone.cb_modules.1.{k}"] = torch.randn_like(v)
        for i in range(4):
            sd[f"backbone.cb_modules.1.gamma{i}"] = torch.randn(chans[i])
            for j in range(1, 4 - i):
                sd[f"backbone.cb_linears.{i}.{j}.weight"] = torch.randn(chans[i], chans[i + j], 1, 1)
                sd[f"backbone.cb_linears.{i}.{j}.bias"] = torch.randn(chans[i])
    else:
        sd.update({f"backbone.{k}": torch.randn_like(v) for k, v in backbone.items()})
    neck = "neck.0." if cb else "neck."  # CB config: neck=[dict(type='CBChannelMapper', ...)] -> Sequential
    for i, c in enumerate(chans[1:]):  # ChannelMapper: ConvModule(c, D, 1, norm GN) -> conv (no bias) + gn
        sd[f"{neck}convs.{i}.conv.weight"] = torch.randn(D, c, 1, 1)
        sd[f"{neck}convs.{i}.gn.weight"], sd[f"{neck}convs.{i}.gn.bias"] = torch.randn(D), torch.randn(D)
    sd[f"{neck}extra_convs.0.conv.weight"] = torch.randn(D, chans[-1], 3, 3)
    sd[f"{neck}extra_convs.0.gn.weight"], sd[f"{neck}extra_convs.0.gn.bias"] = torch.randn(D), torch.randn(D)
    t = "bbox_head.transformer."
    sd[t + "level_embeds"] = torch.randn(4, D)
    for e in range(ENC):
        _msda(sd, f"{t}encoder.layers.{e}.attentions.0.")
        _ffn_norms(sd, f"{t}encoder.layers.{e}.", 2)
    for d in range(DEC):
        a = f"{t}decoder.layers.{d}.attentions.0.attn."  # mmcv MultiheadAttention wraps nn.MultiheadAttention
        sd[a + "in_proj_weight"], sd[a + "in_proj_bias"] = torch.randn(3 * D, D), torch.randn(3 * D)
        sd[a + "out_proj.weight"], sd[a + "out_proj.bias"] = torch.randn(D, D), torch.randn(D)
        _msda(sd, f"{t}decoder.layers.{d}.attentions.1.")
        _ffn_norms(sd, f"{t}decoder.layers.{d}.", 3)
    sd[t + "decoder.ref_point_head.0.weight"], sd[t + "decoder.ref_point_head.0.bias"] = (
        torch.randn(D, 2 * D),
        torch.randn(D),
    )
    sd[t + "decoder.ref_point_head.2.weight"], sd[t + "decoder.ref_point_head.2.bias"] = (
        torch.randn(D, D),
        torch.randn(D),
    )
    sd[t + "decoder.norm.weight"], sd[t + "decoder.norm.bias"] = torch.randn(D), torch.randn(D)
    sd[t + "enc_output.weight"], sd[t + "enc_output.bias"] = torch.randn(D, D), torch.randn(D)
    sd[t + "enc_output_norm.weight"], sd[t + "enc_output_norm.bias"] = torch.randn(D), torch.randn(D)
    sd[t + "query_embed.weight"] = torch.randn(Q, D)
    for i in range(DEC + 1):  # DeformableDETRHead: num_pred = decoder layers + 1 (two-stage), box refine clones
        sd[f"bbox_head.cls_branches.{i}.weight"], sd[f"bbox_head.cls_branches.{i}.bias"] = (
            torch.randn(classes, D),
            torch.randn(classes),
        )
        for j, (o, c) in zip((0, 2, 4), ((D, D), (D, D), (4, D))):
            sd[f"bbox_head.reg_branches.{i}.{j}.weight"] = torch.randn(o, c)
            sd[f"bbox_head.reg_branches.{i}.{j}.bias"] = torch.randn(o)
    # DINOHead: Embedding(cls_out_channels, embed_dims)
    sd["bbox_head.label_embedding.weight"] = torch.randn(classes, D)
    return sd


@pytest.mark.parametrize("cb", [False, True], ids=["dino", "cb_dino"])
def test_official_checkpoint_loads_strictly(cb):
    model = tiny_dino(cb)
    sd = official_dino_state(cb)
    model.load_state_dict(sd, strict=True)
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in sd.items())
    model.eval()
    with torch.no_grad():
        out = model([torch.randint(0, 255, (3, 64, 96), dtype=torch.uint8)])
    assert out[0]["boxes"].shape == (60, 4) and torch.isfinite(out[0]["scores"]).all()


def test_cb_backbone_zero_gammas_make_the_lead_an_ordinary_internimage():
    model = tiny_dino(cb=True).eval()
    cb = model.backbone
    lead = create_model("internimage_test_32", num_classes=0, layer_scale=1.0).eval()
    state = {k: v for k, v in cb.cb_modules[1].state_dict().items() if not k.startswith("gamma")}
    state.update({k: v for k, v in cb.cb_modules[0].state_dict().items() if k.startswith("patch_embed.")})
    lead.load_state_dict(state, strict=False)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assist_maps, lead_maps = cb(x)
        ref = lead.forward_intermediates(x, indices=[1, 2, 3], intermediates_only=True)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(lead_maps, ref))
        # A non-zero gamma feeds the assisting maps (1x1-mapped, nearest-resized) into the lead.
        cb.cb_modules[1].gamma1.fill_(1.0)
        _, fed = cb(x)
    assert not torch.allclose(fed[0], lead_maps[0])
    assert all(a.shape == b.shape for a, b in zip(assist_maps, lead_maps))


def test_training_losses_have_the_official_names_and_backpropagate():
    model = tiny_dino(cb=True).train()
    images = [
        torch.randint(0, 255, (3, 64, 96), dtype=torch.uint8),
        torch.randint(0, 255, (3, 48, 64), dtype=torch.uint8),
    ]
    targets = [
        dict(boxes=torch.tensor([[4.0, 6, 40, 50], [30, 10, 90, 60]]), labels=torch.tensor([1, 3])),
        dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long)),
    ]
    losses = model(images, targets)
    names = {"interm_loss_cls", "loss_cls", "d0.loss_bbox", "dn_loss_iou", "d0.dn_loss_cls"}
    assert {f"{n}1" for n in names} <= set(losses) and {f"{n}0_w0.5" for n in names} <= set(losses)
    assert len(losses) == 2 * (3 + 3 * DEC * 2)
    total = sum(losses.values())
    total.backward()
    assert torch.isfinite(total)
    assert model.bbox_head.label_embedding.weight.grad.abs().sum() > 0
    assert model.backbone.cb_modules[1].gamma0.grad is not None
    with pytest.raises(ValueError, match="labels must be in 1..3"):
        model(images[:1], [dict(boxes=torch.tensor([[0.0, 0, 5, 5]]), labels=torch.tensor([0]))])
    with pytest.raises(ValueError, match="targets are required"):
        model(images)


# ------------------------------------------------------------------------------------------------ sizes
@pytest.mark.parametrize(
    "build,backbone,layer_scale,millions,tol",
    [
        (build_dino, "internimage_t_1k_224", 1.0, 49, 0.5),  # zoo: 49M
        (build_dino, "internimage_l_22k_384", 1.0, 241, 0.5),  # zoo: 241M
        (build_cb_dino, "internimage_h_22kto1k_384", None, 2180, 5),  # zoo: 2.18B
        (build_dino, "internimage_h_22kto1k_384", None, 1098.7, 0.5),  # no zoo figure: ours
        (build_dino, "internimage_g_22kto1k_512", None, 3082.6, 0.5),  # no zoo figure: ours
    ],
)
def test_full_size_parameter_counts_match_the_zoo(build, backbone, layer_scale, millions, tol):
    with torch.device("meta"):
        model = build(backbone, 80, backbone_overrides=dict(layer_scale=layer_scale))
    assert abs(sum(p.numel() for p in model.parameters()) / 1e6 - millions) < tol


# ------------------------------------------------------------------------------------------------ training / export
@pytest.mark.slow
def test_overfitting_four_images_reaches_box_ap_above_half(tmp_path):
    pytest.importorskip("faster_coco_eval")
    from internimage.detection.data import CocoDetection, collate_detection
    from internimage.detection.evaluation import coco_evaluate, predictions_to_coco
    from test_detection import make_coco

    ann, images = make_coco(tmp_path, 4)
    ds = CocoDetection(ann, images, train=True, with_masks=False)
    batch = collate_detection([ds[i] for i in range(4)])
    torch.manual_seed(0)
    model = build_dino("internimage_test_32", 2, backbone_overrides=dict(layer_scale=1.0), **dict(TINY, num_queries=30))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    model.train()
    for _ in range(80):  # ~0.6 s a step on one thread; AP 0.73 after 80 steps, ~0.9 after 150
        losses = model(batch["images"], batch["targets"])
        opt.zero_grad()
        sum(losses.values()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    with torch.no_grad():
        preds = model(batch["images"], orig_sizes=[t["orig_size"] for t in batch["targets"]])
    results = predictions_to_coco(preds, [t["image_id"] for t in batch["targets"]], ds.cat_ids)
    metrics = coco_evaluate(ann, results, iou_types=("bbox",))
    assert metrics["bbox_mAP"] > 0.5, metrics


class _Exported(torch.nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward_tensor(x)


@pytest.mark.slow
def test_onnx_export_of_the_whole_detector_matches_pytorch_on_two_sizes(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model = tiny_dino().eval()
    dim = torch.export.Dim
    hb, wb = dim("hb", min=3, max=256), dim("wb", min=3, max=256)
    with torch.no_grad():
        prog = torch.export.export(
            _Exported(model),
            (torch.randn(2, 3, 128, 128),),
            dynamic_shapes=({0: dim("batch", min=1, max=64), 2: 32 * hb, 3: 32 * wb},),
        )
    onnx_program = torch.onnx.export(prog, dynamo=True, opset_version=20, output_names=["scores", "labels", "boxes"])
    onnx_program.save(str(tmp_path / "dino.onnx"))
    session = ort.InferenceSession(str(tmp_path / "dino.onnx"), providers=["CPUExecutionProvider"])
    import onnx

    ops = {n.op_type for n in onnx.load(str(tmp_path / "dino.onnx")).graph.node}
    assert "GridSample" in ops and all(not n.domain for n in onnx.load(str(tmp_path / "dino.onnx")).graph.node)
    for shape in [(1, 3, 96, 128), (2, 3, 160, 96)]:
        x = torch.randn(shape)
        with torch.no_grad():
            expected = model.forward_tensor(x)
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        for name, e, g in zip(("scores", "labels", "boxes"), expected, got):
            err = (torch.as_tensor(g).to(e.dtype) - e).abs().max().item()
            assert err <= 1e-4, (shape, name, err)  # boxes are in pixels: 1e-4 px


@pytest.mark.parametrize("cb", [False, True], ids=["dino", "cb_dino"])
def test_weight_loader_takes_official_files_and_classification_backbones(tmp_path, cb):
    from internimage.detection.models import build_detector, load_detector_weights
    from internimage.models.checkpoint import CheckpointError

    official = tmp_path / "official.pth"
    sd = official_dino_state(cb)
    torch.save({"state_dict": sd, "meta": {}}, official)
    model = tiny_dino(cb)
    arch = "cb_dino" if cb else "dino"
    same = build_detector(arch, "internimage_test_32", K, backbone_overrides=dict(layer_scale=1.0), **TINY)
    assert same.state_dict().keys() == model.state_dict().keys()
    result = load_detector_weights(model, official, strict=True)
    assert result.format == "dino" and not result.missing
    assert torch.equal(model.state_dict()["bbox_head.label_embedding.weight"], sd["bbox_head.label_embedding.weight"])
    backbone = tmp_path / "cls.pth"
    cls = create_model("internimage_test_32", layer_scale=1.0)
    torch.save({"model": cls.state_dict()}, backbone)
    result = load_detector_weights(tiny_dino(cb), backbone, strict=False)
    assert result.format == "backbone"
    torch.save({"state_dict": {k: v for k, v in sd.items() if "label_embedding" not in k}}, official)
    with pytest.raises(CheckpointError, match="1 missing"):
        load_detector_weights(tiny_dino(cb), official, strict=True)


def test_cli_train_eval_predict_with_arch_dino(tmp_path, capsys):
    pytest.importorskip("faster_coco_eval")
    import json

    from internimage.cli import main
    from test_detection import make_coco

    ann, images = make_coco(tmp_path / "coco", 4)
    kwargs = {k: v for k, v in TINY.items()}
    common = ["--task", "detection", "--data-root", str(ann.parent), "--arch", "dino", "--model",
              "internimage_test_32", "--num-classes", "2", "--device", "cpu"]  # fmt: skip
    sets = ["train_ann=ann.json", "train_images=images", "val_ann=ann.json", "val_images=images", "img_scale=[128,96]",
            f"model_kwargs={json.dumps(kwargs)}", "workers=0", "warmup_iters=1", "lr=1e-3"]  # fmt: skip
    # 96 x 128: the stride-64 level is 2 x 2 (GroupNorm of one channel per group needs more than one value).
    run = tmp_path / "run"
    assert main(["train", *common, "--output", str(run), "--epochs", "1", "--batch-size", "2", *sets]) == 0
    result = json.loads((run / "result.json").read_text())
    assert "bbox_mAP" in result and "segm_mAP" not in result
    capsys.readouterr()
    code = main(["eval", "--task", "detection", "--checkpoint", str(run / "model.safetensors"), "--data-root",
                 str(ann.parent), "--out", str(tmp_path / "ev"), "val_ann=ann.json", "val_images=images"])  # fmt: skip
    assert code == 0
    metrics = json.loads((tmp_path / "ev" / "det_metrics.json").read_text())
    assert metrics["bbox_mAP"] == pytest.approx(result["bbox_mAP"], abs=1e-6)
    out = tmp_path / "pred"
    code = main(["predict", "--task", "detection", "--checkpoint", str(run / "model.safetensors"),
                 str(images / "000.png"), "--output", str(out), "--score-thresh", "0.0"])  # fmt: skip
    assert code == 0 and json.loads((out / "predictions.json").read_text())[0]["detections"]


def test_presets_follow_the_official_dino_configs():
    from internimage.detection import DetectionConfig

    t = DetectionConfig.from_preset("dino_4scale_internimage_t_1x_coco_layer_wise_lr")
    assert (t.arch, t.model, t.lr, t.weight_decay, t.layer_decay, t.clip_grad) == (
        "dino", "internimage_t_1k_224", 1e-4, 1e-4, 0.9, 0.1
    )  # fmt: skip
    assert (t.epochs, t.decay_milestones, t.drop_path_rate, t.layer_scale, t.recipe) == (12, [11], 0.2, 1.0, "dino")
    assert t.offset_lr_mul == 1.0
    cb = DetectionConfig.from_preset("dino_4scale_cbinternimage_h_objects365_coco_ss")
    assert cb.arch == "cb_dino" and cb.model_kwargs == dict(num_dn_queries=1000, max_per_img=300)
    assert (cb.recipe, tuple(cb.img_scale), cb.offset_lr_mul) == ("dino_ss", (2000, 1000), 1e-3)
    assert (cb.layer_decay, cb.drop_path_rate, cb.layer_scale, cb.iters, cb.decay_milestones) == (
        0.94,
        0.5,
        None,
        20000,
        [],
    )


def test_export_check_compares_with_the_exported_runs_query_selection(tmp_path, monkeypatch):
    # onnxruntime may rank near-tied encoder tokens in another order than PyTorch; DINO pairs the i-th token with
    # the i-th query, so the detections differ. The check gives PyTorch the exported run's selection: a file that
    # swapped two selected tokens is not an export error, a file with other numbers still is.
    import internimage.export.core as core
    from internimage.export.models import dino_exportable

    exportable = dino_exportable(tiny_dino(seed=3), "tiny", min_side=64)
    x_shape = (1, 3, 128, 96)
    with torch.no_grad():
        own = exportable.module(torch.randn(*x_shape, generator=torch.Generator().manual_seed(0)))
    assert exportable.output_names[3] == "query_index" and own[3].shape == (1, Q)  # the selected encoder tokens
    swapped = own[3].clone()
    swapped[:, [0, 1]] = swapped[:, [1, 0]]

    def fake_runner(add: float):
        def run(x):
            with torch.no_grad():
                out = exportable.module(x, swapped)  # what a runtime with the other order computes
            return [out[0].numpy() + add, *(t.numpy() for t in out[1:])]

        return lambda path, format: run

    monkeypatch.setattr(core, "_runner", fake_runner(0.0))
    assert max(err for _, err in core.verify_export(exportable, tmp_path / "x.onnx", "onnx", [x_shape])) == 0.0
    monkeypatch.setattr(core, "_runner", fake_runner(1e-3))
    assert max(err for _, err in core.verify_export(exportable, tmp_path / "x.onnx", "onnx", [x_shape])) >= 1e-3
    with torch.no_grad():
        raw = exportable.module(torch.randn(*x_shape, generator=torch.Generator().manual_seed(0)))
        moved = exportable.module(torch.randn(*x_shape, generator=torch.Generator().manual_seed(0)), swapped)
    assert not torch.equal(raw[2], moved[2])  # the swap does change the detections: the raw check would fail


@pytest.mark.parametrize(
    "preset",
    [
        "dino_4scale_cbinternimage_h_objects365_lvis_minival_ss",
        "dino_4scale_cbinternimage_h_objects365_lvis_val_ss",
        "dino_4scale_cbinternimage_h_objects365_openimages_ss",
        "dino_4scale_cbinternimage_h_objects365_voc07",
        "dino_4scale_cbinternimage_h_objects365_voc12",
        "dino_4scale_internimage_l_1x_coco_0.1x_backbone_lr",
    ],
)
def test_official_layout_of_the_presets_beyond_coco_loads_strictly(preset):
    """The official layout with each preset's detector and class count (1203 LVIS, 601 OpenImages, 20 VOC classes:
    ``cls_branches`` and ``label_embedding`` rows), at the tiny widths."""
    from internimage.detection.presets import get_preset

    cfg = get_preset(preset)
    cb = cfg["arch"] == "cb_dino"
    model = tiny_dino(cb, classes=cfg["num_classes"])
    model.load_state_dict(official_dino_state(cb, cfg["num_classes"]), strict=True)
