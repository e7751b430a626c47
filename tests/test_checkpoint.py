"""Checkpoint formats: official, EMA, HF, mmdet/mmseg, safetensors; round trips and clear errors."""

from __future__ import annotations

import argparse
import pickle

import pytest
import timm
import torch

from internimage.cli import main as cli_main
from internimage.engine import CheckpointManager
from internimage.models import CheckpointError, convert_checkpoint, create_model, load_checkpoint
from internimage.models.checkpoint import normalize_state_dict, read_checkpoint

NAME = "internimage_test_post_32"  # has gamma1/2 (layer scale), so the HF rename is exercised


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(0)
    model = create_model(NAME)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # no parameter keeps its init value
    return model.state_dict()


def _fresh(**kw):
    torch.manual_seed(1)
    return create_model(NAME, **kw)


def _assert_loaded(model, sd, skip=()):
    own = model.state_dict()
    for k, v in sd.items():
        if not k.startswith(skip):
            torch.testing.assert_close(own[k], v, rtol=0, atol=0, msg=k)


def test_official_container(tmp_path, source):
    path = tmp_path / "official.pth"
    torch.save({"model": source}, path)
    model = _fresh()
    assert load_checkpoint(model, path).format == "official"
    _assert_loaded(model, source)


def test_training_checkpoint_with_ema(tmp_path, source):
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in source.items()}
    path = tmp_path / "train.pth"
    torch.save({"model": source, "model_ema": ema, "epoch": 3, "optimizer": {"state": {}}}, path)
    model = _fresh()
    load_checkpoint(model, path)
    _assert_loaded(model, source)
    assert load_checkpoint(model, path, use_ema=True).format == "official-ema"
    _assert_loaded(model, ema)


def test_hf_format(tmp_path, source):
    hf = {
        "model." + k.replace("gamma1", "layer_scale1").replace("gamma2", "layer_scale2"): v for k, v in source.items()
    }
    assert any("layer_scale1" in k for k in hf)
    path = tmp_path / "pytorch_model.bin"
    torch.save(hf, path)
    model = _fresh()
    assert load_checkpoint(model, path).format == "hf"
    _assert_loaded(model, source)


def test_mmdet_checkpoint_loads_backbone_and_sets_heads_aside(tmp_path, source):
    backbone = {k: v for k, v in source.items() if k.startswith(("patch_embed", "levels"))}
    neck = {
        "neck.lateral_convs.0.conv.weight": torch.zeros(8, 16, 1, 1),
        "roi_head.bbox_head.fc_cls.bias": torch.ones(3),
    }
    path = tmp_path / "mask_rcnn.pth"
    torch.save({"state_dict": {**{"backbone." + k: v for k, v in backbone.items()}, **neck}, "meta": {}}, path)
    model = _fresh()
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(model, path)  # the classifier is not in a detection checkpoint
    result = load_checkpoint(model, path, strict=False)
    assert result.format == "mmdet" and set(result.set_aside) == set(neck)
    assert all(k.startswith(("conv_head", "head")) for k in result.missing)
    _assert_loaded(model, backbone)


def test_safetensors_convert_round_trip_and_ddp_prefix(tmp_path, source):
    src = tmp_path / "ddp.pth"
    torch.save({"model": {"module." + k: v for k, v in source.items()}}, src)
    fmt, dst, count = convert_checkpoint(src, tmp_path / "converted.safetensors")
    assert fmt == "official" and count == len(source)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temp file
    model = _fresh()
    load_checkpoint(model, dst)
    _assert_loaded(model, source)
    cli_dst = tmp_path / "cli.safetensors"
    assert cli_main(["convert", str(src), str(cli_dst), "--model", NAME]) == 0
    assert read_checkpoint(cli_dst).keys() == read_checkpoint(dst).keys()


def test_create_model_with_checkpoint_and_new_head(tmp_path, source):
    path = tmp_path / "official.pth"
    torch.save({"model": source}, path)
    model = create_model(NAME, checkpoint_path=path)
    _assert_loaded(model, source)
    fine_tune = create_model(NAME, checkpoint_path=path, num_classes=3)
    assert fine_tune.head.out_features == 3
    _assert_loaded(fine_tune, source, skip=("head.",))


def test_timm_pretrained_from_local_file(tmp_path, source):
    path = tmp_path / "official.pth"
    torch.save({"model": source}, path)
    model = timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    _assert_loaded(model, source)


def test_mismatch_errors_are_one_clear_line(tmp_path, source):
    bad = dict(source)
    bad.pop("levels.0.blocks.0.gamma1")
    bad["levels.0.blocks.0.dcn.offset.weight"] = torch.zeros(3, 16)
    bad["stem.conv.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save({"model": bad}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(_fresh(), path)
    message = str(info.value)
    assert "\n" not in message
    assert "1 missing (levels.0.blocks.0.gamma1)" in message
    assert "1 unexpected (stem.conv.weight)" in message
    assert "levels.0.blocks.0.dcn.offset.weight: checkpoint [3, 16] vs model [18, 16]" in message


def test_unreadable_files(tmp_path):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(_fresh(), corrupt)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(_fresh(), tmp_path / "missing.pth")
    not_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_dict)
    with pytest.raises(CheckpointError, match="not a dict"):
        read_checkpoint(not_dict)


class _Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_pickled_code_is_never_executed(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": _Payload()}, f)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    assert "pickled code ran" not in capsys.readouterr().out
    # Not PyTorch's first line, which suggests the unsafe weights_only=False: what the file holds, and why not.
    message = str(info.value)
    assert message.startswith(f"refused {path}: it holds pickled Python objects (builtins.print)"), message
    assert "not loaded for safety" in message and "weights_only" not in message and "\n" not in message
    torch.save({"model": {"w": torch.ones(1)}, "args": argparse.Namespace(lr=1)}, tmp_path / "ns.pth")
    with pytest.raises(CheckpointError, match=r"ns.pth: it holds pickled Python objects \(argparse.Namespace\)"):
        read_checkpoint(tmp_path / "ns.pth")
    with pytest.raises(RuntimeError, match=r"refused .*ns.pth: .*\(argparse.Namespace\)"):
        CheckpointManager.load(tmp_path / "ns.pth")
    with pytest.raises(CheckpointError, match="is a directory"):
        read_checkpoint(tmp_path)


def test_normalize_leaves_our_layout_unchanged(source):
    out, aside = normalize_state_dict(source)
    assert out.keys() == source.keys() and not aside
