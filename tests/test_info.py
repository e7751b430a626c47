"""``internimage info``: parameter and FLOP counts against the official zoo table."""

from __future__ import annotations

import json

import pytest

from internimage.cli import main
from internimage.models.complexity import model_complexity

# The official model zoo's published figures (OpenGVLab/InternImage README, ImageNet-1K table: #params, FLOPs at the
# evaluation size; recorded in shared/spec/ORIGINAL.md 1.1 and in the "zoo" column of our README's Models table),
# written here rather than read from ``internimage.commands.info.ZOO``. Params must be within 1% and FLOPs within 5%;
# "3B" for G is a rounded figure that the exact count (3.076B) misses by 2.5%, so G's params are checked at 3%.
PUBLISHED = [
    # model, params, FLOPs (multiply-accumulates, as the paper counts them), evaluation size, params tolerance
    ("internimage_t_1k_224", 30e6, 5e9, 224, 0.01),
    ("internimage_s_1k_224", 50e6, 8e9, 224, 0.01),
    ("internimage_b_1k_224", 97e6, 16e9, 224, 0.01),
    ("internimage_l_22kto1k_384", 223e6, 108e9, 384, 0.01),
    ("internimage_xl_22kto1k_384", 335e6, 163e9, 384, 0.01),
    ("internimage_h_22kto1k_640", 1.08e9, 1478e9, 640, 0.01),
    ("internimage_g_22kto1k_512", 3e9, 2700e9, 512, 0.03),
]


@pytest.mark.parametrize("name,params,flops,resolution,param_tol", PUBLISHED, ids=[c[0] for c in PUBLISHED])
def test_counts_match_the_published_zoo(name, params, flops, resolution, param_tol):
    c = model_complexity(name)
    assert c.resolution == resolution  # counted at the size the zoo reports
    assert abs(c.params / params - 1) <= param_tol
    assert abs(c.macs / flops - 1) <= 0.05
    assert c.dcn_macs > 0


def test_t_exact_counts():
    c = model_complexity("internimage_t_1k_224")
    assert c.params == 29_918_424
    # 4.79 GMACs of convolutions and linears (BASELINES.md §1) + 0.10 of DCN sampling.
    assert 4.85e9 < c.macs < 4.95e9 and 0.09e9 < c.dcn_macs < 0.11e9


def test_info_command_json(capsys):
    assert main(["info", "--models", "internimage_t_1k_224", "--json"]) == 0
    row = json.loads(capsys.readouterr().out.strip())
    assert row["params"] == 29_918_424 and row["resolution"] == 224
    # The "vs zoo" columns must be relative to the published 30M / 5G of InternImage-T.
    assert row["zoo_params_diff_pct"] == round(100 * (29_918_424 / 30e6 - 1), 2)
    assert abs(row["zoo_flops_diff_pct"] - 100 * (row["gmacs"] / 5 - 1)) <= 0.11  # gmacs is rounded to 0.01
    assert abs(row["zoo_flops_diff_pct"]) < 5


def test_info_table_lists_every_model(capsys):
    assert main(["info", "--models", "internimage_[tsb]_*"]) == 0
    out = capsys.readouterr().out
    assert all(n in out for n in ("internimage_t_1k_224", "internimage_s_1k_224", "internimage_b_1k_224"))
    assert main(["info", "--models", "nothing*"]) == 1
