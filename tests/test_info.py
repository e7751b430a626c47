"""``internimage info``: parameter and FLOP counts against the official zoo table."""

from __future__ import annotations

import json

import pytest

from internimage.cli import main
from internimage.models.complexity import model_complexity
from internimage.tasks.info import ZOO

# (model, zoo arch): params within 1% and FLOPs within 5% of the published figures; "3B" for G is a rounded
# figure that the exact count (3.076B) misses by 2.5%, so G's params are checked at 3%.
CASES = [
    ("internimage_t_1k_224", "t", 0.01),
    ("internimage_s_1k_224", "s", 0.01),
    ("internimage_b_1k_224", "b", 0.01),
    ("internimage_l_22kto1k_384", "l", 0.01),
    ("internimage_xl_22kto1k_384", "xl", 0.01),
    ("internimage_h_22kto1k_640", "h", 0.01),
    ("internimage_g_22kto1k_512", "g", 0.03),
]


@pytest.mark.parametrize("name,arch,param_tol", CASES)
def test_counts_match_the_zoo(name, arch, param_tol):
    c = model_complexity(name)
    params, flops = ZOO[arch]
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
    assert row["params"] == 29_918_424 and row["resolution"] == 224 and abs(row["zoo_flops_diff_pct"]) < 5


def test_info_table_lists_every_model(capsys):
    assert main(["info", "--models", "internimage_[tsb]_*"]) == 0
    out = capsys.readouterr().out
    assert all(n in out for n in ("internimage_t_1k_224", "internimage_s_1k_224", "internimage_b_1k_224"))
    assert main(["info", "--models", "nothing*"]) == 1
