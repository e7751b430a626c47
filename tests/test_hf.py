"""transformers Auto classes (extra ``[hf]``): directories in the layout of OpenGVLab's Hub repositories.

Each test writes such a directory itself, as the original's ``classification/huggingface/convert.py`` does: a
``config.json`` with the official fields, ``auto_map`` (remote code) and ``architectures``, and a
``pytorch_model.bin`` holding the official classification state dict with every key prefixed ``model.`` and
``gamma1/2`` renamed ``layer_scale1/2``, here of a randomly initialised tiny model.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification  # noqa: E402

import internimage  # noqa: E402  (registers with the Auto classes)
from internimage.models import ARCHS, MODEL_SPECS, CheckpointError  # noqa: E402
from internimage.models.hf import (  # noqa: E402
    InternImageConfig,
    InternImageForImageClassification,
    InternImageModel,
    config_for,
    image_processor_for,
)

AUTO_MAP = {
    "AutoConfig": "configuration_internimage.InternImageConfig",
    "AutoModel": "modeling_internimage.InternImageModel",
    "AutoModelForImageClassification": "modeling_internimage.InternImageModelForImageClassification",
}
#: The fields of the official configuration_internimage.py, as its config.json files hold them.
OFFICIAL_FIELDS = [
    "act_layer",
    "center_feature_scale",
    "channels",
    "cls_scale",
    "core_op",
    "depths",
    "drop_path_rate",
    "drop_path_type",
    "drop_rate",
    "dw_kernel_size",
    "groups",
    "layer_scale",
    "level2_post_norm",
    "level2_post_norm_block_ids",
    "mlp_ratio",
    "model_type",
    "norm_layer",
    "num_classes",
    "offset_scale",
    "post_norm",
    "remove_center",
    "res_post_norm",
    "use_clip_projector",
    "with_cp",
]
FLASH = dict(core_op="DCNv4", mlp_fc2_bias=False, dcn_output_bias=False, dw_kernel_size=3)
#: (registered name, InternImage overrides): T-like, layer scale + post norm, H and G heads, FlashInternImage.
CASES = [
    ("internimage_test_32", {}),
    ("internimage_test_post_32", {}),
    ("internimage_test_h_32", {}),
    ("internimage_test_g_32", {}),
    ("internimage_test_32", FLASH),
]
CASE_IDS = ["t", "layer_scale", "h", "g", "dcnv4"]
#: preprocessor_config.json of the Hub repositories, at the tiny models' 32 pixels.
OFFICIAL_PREPROCESSOR = {
    "crop_size": 32,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "resample": 3,
    "size": 32,
}
NUM_CLASSES = 10
LABELS = {i: f"class_{i}" for i in range(NUM_CLASSES)}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and do not slow down badly on a shared machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def hub_config(name: str, overrides: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """config.json of ``name`` as the original writes it (official field names, written out here by hand)."""
    arch = ARCHS[MODEL_SPECS[name][0]]
    block_ids = arch.level2_post_norm_block_ids
    out = {
        "_name_or_path": f"OpenGVLab/{name}",
        "act_layer": "GELU",
        "architectures": ["InternImageModel"],
        "auto_map": AUTO_MAP,
        "center_feature_scale": arch.center_feature_scale,
        "channels": arch.channels,
        "cls_scale": 1.5,
        "core_op": arch.core_op,
        "depths": list(arch.depths),
        "drop_path_rate": 0.0,
        "drop_path_type": "linear",
        "drop_rate": 0.0,
        "dw_kernel_size": arch.dw_kernel_size,
        "groups": list(arch.groups),
        "layer_scale": arch.layer_scale,
        "level2_post_norm": bool(block_ids),
        "level2_post_norm_block_ids": list(block_ids) if block_ids else None,
        "mlp_ratio": 4.0,
        "model_type": "internimage",
        "norm_layer": "LN",
        "num_classes": NUM_CLASSES,
        "offset_scale": arch.offset_scale,
        "post_norm": arch.post_norm,
        "remove_center": False,
        "res_post_norm": arch.res_post_norm,
        "torch_dtype": "float32",
        "transformers_version": "4.37.2",
        "use_clip_projector": arch.use_clip_projector,
        "with_cp": False,
    }
    out.update(arch.extra)  # the tiny H/G heads' widths: our three extension fields
    out.update(overrides)
    out.update(fields)
    return out


def write_hub_dir(path: Path, config: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> Path:
    """Write ``config.json`` and ``pytorch_model.bin`` with the Hub's weight names."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    hub = {
        "model." + k.replace(".gamma1", ".layer_scale1").replace(".gamma2", ".layer_scale2"): v.clone()
        for k, v in state_dict.items()
    }
    torch.save(hub, path / "pytorch_model.bin")
    return path


def reference(name: str, overrides: dict[str, Any], seed: int = 0) -> torch.nn.Module:
    """The timm-registered model, randomly initialised (non-trivial norms and stats), in eval mode."""
    torch.manual_seed(seed)
    model = internimage.create_model(name, num_classes=NUM_CLASSES, **overrides)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="module", params=list(zip(CASES, CASE_IDS)), ids=CASE_IDS)
def hub_case(request, tmp_path_factory) -> dict[str, Any]:
    """A Hub directory of one case, its input and the timm-registered model's outputs on it."""
    (name, overrides), case_id = request.param
    ref = reference(name, overrides)
    path = write_hub_dir(tmp_path_factory.mktemp(case_id), hub_config(name, overrides), ref.state_dict())
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        features, maps = ref.forward_intermediates(x)
        pooled = ref.forward_head(features, pre_logits=True)
    return dict(path=path, x=x, logits=ref.head(pooled), maps=maps, pooled=pooled, state_dict=ref.state_dict())


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def test_hub_directory_loads_without_remote_code_and_matches_create_model(hub_case, caplog) -> None:
    path, x = hub_case["path"], hub_case["x"]
    assert "auto_map" in json.loads((path / "config.json").read_text())
    with caplog.at_level(logging.WARNING):
        assert isinstance(AutoConfig.from_pretrained(path), InternImageConfig)
        model = AutoModelForImageClassification.from_pretrained(path)
    assert not caplog.records, caplog.text  # no remote-code prompt, no load report: every weight found
    assert type(model) is InternImageForImageClassification
    labels = torch.tensor([3, 7])
    with torch.no_grad():
        out = model(x, labels=labels)
    assert out.logits.shape == (2, NUM_CLASSES)
    assert max_diff(out.logits, hub_case["logits"]) <= 1e-6
    assert abs(out.loss.item() - torch.nn.functional.cross_entropy(hub_case["logits"], labels).item()) < 1e-6
    assert max_diff(out.pooler_output, hub_case["pooled"]) <= 1e-6
    assert torch.equal(out.last_hidden_state, out.hidden_states[-1])


def test_base_model_returns_level_maps_and_pooled_features(hub_case) -> None:
    model = AutoModel.from_pretrained(hub_case["path"])
    assert type(model) is InternImageModel
    with torch.no_grad():
        out = model(pixel_values=hub_case["x"])
    assert len(out.hidden_states) == 4
    for i, (got, want) in enumerate(zip(out.hidden_states, hub_case["maps"])):
        assert got.shape == want.shape == (2, model.config.channels * 2**i, 8 // 2**i, 8 // 2**i)
        assert max_diff(got, want) <= 1e-6
    assert torch.equal(out.last_hidden_state, out.hidden_states[-1])
    assert max_diff(out.pooler_output, hub_case["pooled"]) <= 1e-6


def test_save_pretrained_round_trips_with_the_official_names(hub_case, tmp_path) -> None:
    path = hub_case["path"]
    model = AutoModelForImageClassification.from_pretrained(path)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    original = json.loads((path / "config.json").read_text())
    assert {k: saved[k] for k in OFFICIAL_FIELDS} == {k: original[k] for k in OFFICIAL_FIELDS}
    assert saved["auto_map"] == AUTO_MAP
    from safetensors.torch import load_file

    assert set(load_file(tmp_path / "model.safetensors")) == set(
        torch.load(path / "pytorch_model.bin", weights_only=True)
    )
    again = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert again.config.id2label == model.config.id2label
    with torch.no_grad():
        assert max_diff(again(hub_case["x"]).logits, hub_case["logits"]) <= 1e-6


def test_a_fresh_model_saves_the_hub_names_too(tmp_path) -> None:
    config = config_for("internimage_test_post_32")
    assert config.layer_scale == 1e-5 and config.num_classes == 10
    InternImageForImageClassification(config).save_pretrained(tmp_path)
    from safetensors.torch import load_file

    names = list(load_file(tmp_path / "model.safetensors"))
    assert any(n.endswith(".layer_scale1") for n in names)
    assert not any(".gamma" in n for n in names) and all(n.startswith("model.") for n in names)


@pytest.mark.parametrize(
    "labels",
    [
        {"num_labels": 3},
        {"num_classes": 3},
        {"id2label": {0: "a", 1: "b", 2: "c"}, "label2id": {"a": 0, "b": 1, "c": 2}},
    ],
    ids=["num_labels", "num_classes", "id2label"],
)
def test_new_head_for_fine_tuning_keeps_the_backbone(tmp_path, labels) -> None:
    ref = reference("internimage_test_post_32", {})
    path = write_hub_dir(tmp_path, hub_config("internimage_test_post_32", {}), ref.state_dict())
    model = AutoModelForImageClassification.from_pretrained(path, ignore_mismatched_sizes=True, **labels)
    assert model.config.num_classes == model.config.num_labels == 3 and model.model.head.out_features == 3
    for key, value in ref.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(model.model.state_dict()[key], value), key
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).logits.shape == (1, 3)


def test_pipeline_classifies_an_image_with_the_labels_of_id2label(tmp_path) -> None:
    from PIL import Image

    name = "internimage_test_32"
    ref = reference(name, {})
    config = hub_config(name, {}, id2label={str(k): v for k, v in LABELS.items()})
    path = write_hub_dir(tmp_path, config, ref.state_dict())
    model = AutoModelForImageClassification.from_pretrained(path)
    processor = image_processor_for(name)
    classify = transformers.pipeline("image-classification", model=model, image_processor=processor)
    image = Image.fromarray(torch.randint(0, 256, (40, 48, 3), dtype=torch.uint8).numpy())
    results = classify(image, top_k=3)
    assert isinstance(results, list) and len(results) == 3
    assert all(isinstance(r["label"], str) and r["label"] in LABELS.values() for r in results)
    assert 0 < sum(r["score"] for r in results) <= 1 + 1e-6
    with torch.no_grad():
        best = ref(processor(image, return_tensors="pt").pixel_values).argmax().item()
    assert results[0]["label"] == LABELS[best]
    # The whole Hub layout: the official preprocessor_config.json (CLIP, read by AutoImageProcessor), by path.
    (path / "preprocessor_config.json").write_text(json.dumps(OFFICIAL_PREPROCESSOR))
    results = transformers.pipeline("image-classification", model=str(path))(image)
    assert results and all(r["label"] in LABELS.values() for r in results)


def test_image_processor_matches_timms_eval_transform() -> None:
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    name = "internimage_t_1k_224"
    processor = image_processor_for(name)
    transform = create_transform(**resolve_data_config({}, pretrained_cfg=MODEL_SPECS[name][1]))
    # 260 x 300: shorter side to 224, the longer to 258, an even margin (34) so both crops start at 17.
    pixels = torch.randint(0, 256, (260, 300, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    image = Image.fromarray(pixels.numpy())
    ours = processor(image, return_tensors="pt").pixel_values[0]
    assert ours.shape == (3, 224, 224)
    assert max_diff(ours, transform(image)) < 1e-5
    # A config of a registered architecture finds the same processor.
    assert image_processor_for(config_for(name)).crop_size == processor.crop_size


def test_image_processor_refuses_what_it_cannot_know() -> None:
    with pytest.raises(ValueError, match="unknown InternImage model"):
        image_processor_for("internimage_q_1k_224")
    with pytest.raises(ValueError, match="pass image_size"):
        image_processor_for(config_for("internimage_h_22kto1k_640"))  # H-1k exists at 384 and 640
    assert image_processor_for(config_for("internimage_h_22kto1k_640"), image_size=640).crop_size["height"] == 640


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"groups": [3, 2, 4, 8]}, "not divisible by groups=3"),
        ({"core_op": "DCNv9"}, "core_op must be one of"),
        ({"act_layer": "ReLU"}, "act_layer 'ReLU'"),
        ({"depths": [1, 1, 2]}, "one entry per level"),
        ({"level2_post_norm": True, "level2_post_norm_block_ids": [5]}, "level2_post_norm_block_ids"),
        ({"num_classes": 5, "id2label": {"0": "a"}}, "num_classes=5 but id2label has 1"),
    ],
)
def test_a_config_that_describes_no_model_is_refused_in_one_line(tmp_path, fields, needle) -> None:
    (tmp_path / "config.json").write_text(json.dumps(hub_config("internimage_test_32", {}, **fields)))
    with pytest.raises(ValueError, match=needle) as info:
        AutoConfig.from_pretrained(tmp_path)
    assert "\n" not in str(info.value)


def test_a_plain_official_state_dict_loads_too(hub_case, tmp_path) -> None:
    (tmp_path / "config.json").write_text((hub_case["path"] / "config.json").read_text())
    torch.save(hub_case["state_dict"], tmp_path / "pytorch_model.bin")  # no ``model.`` prefix, ``gamma1/2``
    model = AutoModelForImageClassification.from_pretrained(tmp_path)
    with torch.no_grad():
        assert max_diff(model(hub_case["x"]).logits, hub_case["logits"]) <= 1e-6


def test_a_checkpoint_that_does_not_fit_is_refused_in_one_line(tmp_path) -> None:
    name = "internimage_test_32"
    sd = reference(name, {}).state_dict()
    sd.pop("levels.2.blocks.1.dcn.input_proj.weight")
    path = write_hub_dir(tmp_path, hub_config(name, {}), sd)
    with pytest.raises(CheckpointError, match="1 backbone weights missing") as info:
        AutoModelForImageClassification.from_pretrained(path)
    assert "\n" not in str(info.value)
    # Another architecture's weights (S-like layer scales in a T-like config): unknown names.
    path = write_hub_dir(tmp_path / "s", hub_config(name, {}), reference("internimage_test_post_32", {}).state_dict())
    with pytest.raises(CheckpointError, match="unknown weights .*layer_scale1"):
        AutoModelForImageClassification.from_pretrained(path)


def test_import_is_lazy_and_registers_when_transformers_is_used() -> None:
    script = (
        "import sys, internimage\n"
        "assert 'transformers' not in sys.modules, 'import internimage imported transformers'\n"
        "from transformers import AutoConfig\n"
        "from transformers.models.auto.configuration_auto import CONFIG_MAPPING\n"
        "assert CONFIG_MAPPING['internimage'].__module__ == 'internimage.models.hf_config'\n"
        "assert 'internimage.models.hf' not in sys.modules  # AutoConfig alone needs no modeling code\n"
        "from transformers import AutoModel, AutoModelForImageClassification\n"
        "from transformers.models.auto import modeling_auto as auto\n"
        "from internimage.models import hf\n"
        "assert auto.MODEL_MAPPING[hf.InternImageConfig] is hf.InternImageModel\n"
        "assert auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING[hf.InternImageConfig] "
        "is hf.InternImageForImageClassification\n"
        "assert not any(getattr(f, 'internimage_hf_hook', False) for f in sys.meta_path), 'hook left behind'\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_registration_is_idempotent_and_a_failure_only_warns(caplog) -> None:
    from internimage.models import hf, hf_hook

    hf.register()
    hf.register()
    hf_hook.install()
    assert sum(getattr(f, "internimage_hf_hook", False) for f in sys.meta_path) <= 1
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING

    assert MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING[InternImageConfig] is InternImageForImageClassification

    def boom() -> None:
        raise RuntimeError("no luck")

    pending = [("AutoModel", lambda just_ran: True, boom)]
    with caplog.at_level(logging.WARNING, logger="internimage.models.hf_hook"):
        hf_hook._run_ready(pending)
    assert not pending and "could not register with transformers' AutoModel (RuntimeError: no luck)" in caplog.text
