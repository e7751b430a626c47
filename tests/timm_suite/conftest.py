"""Adapter that runs timm's own ``tests/test_models.py`` (unmodified) against InternImage's registered models.

``python tests/timm_suite/fetch_timm_tests.py`` puts the file of the installed timm version next to this one (CI does
that before the test command); without it this folder collects nothing. What the adapter does, and nothing else:

- ``timm.list_models`` / ``timm.list_pretrained`` answer with our models only while the suite is collected, so every
  ``list_models(...)``-parametrized test runs for them. The ``module=`` filter is dropped: InternImage implements
  ``forward_intermediates`` / ``prune_intermediate_layers`` / the ``getter`` feature wrapper, so it takes the tests
  timm runs for its own families with that API.
- Tests written for one named timm model (``test_gcvit_batch_consistency``, ``['resnet18', ...]``) are deselected:
  they test timm's models, not the contract.
- :data:`EXCLUDED` tests are skipped with their reason, as timm lists its own exclusions (``EXCLUDE_JIT_FILTERS``).
- Tests that compute on real tensors run on the tiny test variants (every architectural switch of T..G) and the
  smallest released models (T, FlashInternImage-T); the larger ones take the meta-device config test only (as
  timm's CI excludes its large models by name). The prune contract test, which timm's CI leaves out as slow, runs
  on the tiny variants. ``INTERNIMAGE_TIMM_SUITE=all`` runs every test on every model.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import timm

import internimage.models  # noqa: F401  (registers the models with timm)
from internimage.models.internimage import MODEL_NAMES

HERE = Path(__file__).resolve().parent

#: Models that every test runs for; every other registered model takes the meta-device tests only.
COMPUTE_MODELS = frozenset(
    {
        "internimage_test_32",
        "internimage_test_post_32",
        "internimage_test_h_32",
        "internimage_test_g_32",
        "internimage_t_1k_224",
        "flash_intern_image_t_1k_224",
    }
)
#: Tests that build the model on the meta device (structure and shapes only), cheap for every size.
META_TESTS = frozenset({"test_model_default_cfgs"})
#: Tests timm's own CI leaves out as slow (each prunes at every level and trains): the tiny variants only.
SLOW_TESTS = frozenset({"test_prune_intermediate_layers_contract"})
TINY_MODELS = frozenset(name for name in COMPUTE_MODELS if "_test_" in name)

_TORCHSCRIPT = (
    "TorchScript is not supported: the DCN ops dispatch through torch.library custom ops with Python backends "
    "and TorchScript is deprecated upstream; deploy with `internimage export` (ONNX / torch.export) instead"
)
_NETWORK = "downloads the released weights from the Hugging Face Hub; this suite runs offline"
#: Test function -> why it does not apply here.
EXCLUDED = {
    "test_model_forward_torchscript": _TORCHSCRIPT,
    "test_model_forward_fx_torchscript": _TORCHSCRIPT,
    "test_model_load_pretrained": _NETWORK,
    "test_model_features_pretrained": _NETWORK,
    "test_model_inference": _NETWORK,
}

_ALL = "INTERNIMAGE_TIMM_SUITE=all runs it"
_ORIGINAL = {"list_models": timm.list_models, "list_pretrained": timm.list_pretrained}


def _ours(names: list[str]) -> list[str]:
    return [n for n in names if n.split(".")[0] in MODEL_NAMES]


def _list_models(filter="", module="", pretrained=False, exclude_filters="", name_matches_cfg=False, include_tags=None):
    names = _ORIGINAL["list_models"](
        filter=filter,
        pretrained=pretrained,
        exclude_filters=exclude_filters,
        name_matches_cfg=name_matches_cfg,
        include_tags=include_tags,
    )
    return _ours(names)


def _list_pretrained(filter="", exclude_filters=""):
    return _ours(_ORIGINAL["list_pretrained"](filter=filter, exclude_filters=exclude_filters))


def _in_suite(item: pytest.Item) -> bool:
    return HERE in Path(str(item.path)).resolve().parents


def pytest_configure(config: pytest.Config) -> None:
    for marker in ("base", "cfg", "cfg_nonstd", "forward", "backward", "torchscript", "features", "fxforward"):
        config.addinivalue_line("markers", f"{marker}: timm test_models.py group")
    config.addinivalue_line("markers", "fxbackward: timm test_models.py group")
    config.addinivalue_line("markers", "timeout(seconds): timm's per-test limit (enforced only with pytest-timeout)")


def pytest_collectstart(collector: pytest.Collector) -> None:
    if isinstance(collector, pytest.Module) and Path(str(collector.path)).resolve().parent == HERE:
        timm.list_models, timm.list_pretrained = _list_models, _list_pretrained


def pytest_collectreport(report: pytest.CollectReport) -> None:
    timm.list_models, timm.list_pretrained = _ORIGINAL["list_models"], _ORIGINAL["list_pretrained"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_all = os.environ.get("INTERNIMAGE_TIMM_SUITE", "") == "all"
    keep, drop = [], []
    for item in items:
        if not _in_suite(item):
            keep.append(item)
            continue
        params = getattr(getattr(item, "callspec", None), "params", {})
        model = str(params.get("model_name", "")).split(".")[0]
        if model not in MODEL_NAMES:
            drop.append(item)
            continue
        test = item.originalname
        if test in EXCLUDED:
            item.add_marker(pytest.mark.skip(reason=EXCLUDED[test]))
        elif not run_all and test not in META_TESTS and model not in COMPUTE_MODELS:
            item.add_marker(pytest.mark.skip(reason=f"large model: meta-device tests only here ({_ALL})"))
        elif not run_all and test in SLOW_TESTS and model not in TINY_MODELS:
            item.add_marker(pytest.mark.skip(reason=f"slow (timm's CI skips it): tiny variants only here ({_ALL})"))
        keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
