"""Budgets: totals, minimum widths, protected blocks, proportional sharing."""

from __future__ import annotations

import pytest

from medcore_tp import MedcoreError
from medcore_tp.budget import allocate, min_mlp_width, ratio_budget


def test_paper_config_on_vit_b():
    b = ratio_budget([12] * 12, [3072] * 12, 0.5, 0.7, protect=[10, 11])
    assert (b.total_heads, b.total_mlp) == (72, 25_805)
    assert b.heads[10:] == [0, 0] and b.mlp[10:] == [0, 0]
    assert sorted(set(b.heads[:10])) == [7, 8] and sorted(set(b.mlp[:10])) == [2580, 2581]
    # the paper's parameter arithmetic: 196,800 per head, 1,537 per MLP channel
    assert 72 * 196_800 + 25_805 * 1_537 == 89_670_912 - 35_839_027


def test_minimum_widths_and_max_ratio():
    assert min_mlp_width(3072) == 154
    b = ratio_budget([12] * 12, [3072] * 12, 110 / 144, 10 * (3072 - 154) / 36864, protect=[10, 11])
    assert b.heads[:10] == [11] * 10 and b.mlp[:10] == [3072 - 154] * 10


def test_allocation_is_proportional_and_capped():
    alloc = allocate(60, [50, 50, 50], [1.0, 2.0, 3.0])
    assert alloc == [10, 20, 30]
    alloc = allocate(100, [10, 50, 50], [10.0, 1.0, 1.0])  # block 0 capped, the rest shared equally
    assert alloc == [10, 45, 45]
    alloc = allocate(7, [5, 5, 5], [1.0, 1.0, 1.0])
    assert sum(alloc) == 7 and max(alloc) - min(alloc) <= 1
    assert allocate(5, [3, 3, 3], [1.0, 1.0, 0.0]) == [3, 2, 0]  # tie: lower block index first
    assert allocate(8, [3, 3, 3], [1.0, 1.0, 0.0]) == [3, 3, 2]  # zero weight only once the rest is full
    with pytest.raises(ValueError):
        allocate(10, [3, 3], None)


def test_lower_weight_gives_less():
    alloc = allocate(300, [1000] * 4, [1 / 4.0, 1 / 3.0, 1 / 2.0, 1 / 1.0])
    assert alloc == sorted(alloc) and sum(alloc) == 300


@pytest.mark.parametrize(
    "heads_ratio, mlp_ratio, message",
    [
        (1.0, 0.1, r"heads_ratio 1.0: must be in \[0, 1\)"),
        (-0.1, 0.1, r"heads_ratio -0.1: must be in \[0, 1\)"),
        (0.1, 1.5, r"mlp_ratio 1.5: must be in \[0, 1\)"),
        (0.9, 0.1, r"asks for 130 heads but at most 110 can go with blocks 10,11 protected \(largest ratio 0.7639\)"),
        (0.1, 0.8, r"mlp_ratio 0.8: asks for 29491 MLP channels but at most 29180 can go"),
    ],
)
def test_bad_ratios(heads_ratio, mlp_ratio, message):
    with pytest.raises(MedcoreError, match=message):
        ratio_budget([12] * 12, [3072] * 12, heads_ratio, mlp_ratio, protect=[10, 11])


def test_bad_protected_block():
    with pytest.raises(MedcoreError, match="protect 12: the encoder has blocks 0-11"):
        ratio_budget([12] * 12, [3072] * 12, 0.1, 0.1, protect=[12])


def _vit_b_rule(ratio, protect=None):
    from medcore_tp.budget import ratio_rule

    return ratio_rule(ratio, [12] * 12, [3072] * 12, 196_800, 1_537, 89_670_912, protect)


def test_ratio_0_6_is_the_paper_config():
    rule = _vit_b_rule(0.6)
    assert (rule.heads_ratio, rule.mlp_ratio, rule.protect) == (0.5, 0.7, [10, 11])
    assert round(rule.removed_fraction, 4) == 0.6003


def test_every_ratio_lands_within_half_a_point():
    for r in [x / 100 for x in range(1, 89)]:
        rule = _vit_b_rule(r)
        assert abs(rule.removed_fraction - r) <= 0.005, r
        b = ratio_budget([12] * 12, [3072] * 12, rule.heads_ratio, rule.mlp_ratio, rule.protect)
        removed = (b.total_heads * 196_800 + b.total_mlp * 1_537) / 89_670_912
        assert removed == pytest.approx(rule.removed_fraction, abs=1e-12)


@pytest.mark.parametrize(
    "ratio, protect, message",
    [
        (0.0, None, r"ratio 0.0: must be in \(0, 0.7415\] with blocks 10,11 protected"),
        (0.95, None, r"ratio 0.95: must be in \(0, 0.8898\] with no block protected"),
        (0.8, [10, 11], r"ratio 0.8: must be in \(0, 0.7415\] with blocks 10,11 protected"),
    ],
)
def test_ratio_outside_the_range_gives_the_maximum(ratio, protect, message):
    with pytest.raises(MedcoreError, match=message):
        _vit_b_rule(ratio, protect)


def test_library_errors_name_parameters_and_the_cli_maps_them_to_flags():
    from medcore_tp.cli._common import PARAM_FLAGS

    with pytest.raises(MedcoreError) as err:
        ratio_budget([12] * 12, [3072] * 12, 1.0, 0.1)
    assert err.value.param == "heads_ratio" and str(err.value).startswith("heads_ratio 1.0:")
    assert err.value.with_flags(PARAM_FLAGS) == "--heads-ratio 1.0: must be in [0, 1)"


def test_even_allocation_takes_the_same_fraction_of_every_block():
    from medcore_tp.budget import EVEN

    heads, mlp = [4, 4, 5, 5, 10, 10], [512, 512, 640, 640, 1280, 1280]
    budget = ratio_budget(heads, mlp, 0.5, 0.5, weights=EVEN)
    assert sum(budget.heads) == 19 and all(abs(h - n / 2) <= 0.5 for h, n in zip(budget.heads, heads, strict=True))
    assert [round(m / w, 2) for m, w in zip(budget.mlp, mlp, strict=True)] == [0.5] * 6
    # equal counts (no weights) strip the narrow blocks first
    count = ratio_budget(heads, mlp, 0.5, 0.5)
    assert count.mlp[0] / mlp[0] > count.mlp[-1] / mlp[-1]


def test_default_protection_is_the_familys():
    from medcore_tp.models import build_model
    from medcore_tp.pipeline import RatioRequest, default_protection, settle_ratios

    assert default_protection(build_model("sam-vit-b", device="meta")) == [10, 11]  # the paper's
    assert default_protection(build_model("tiny", device="meta")) == [2, 3]
    lite = build_model("lite-medsam", device="meta")
    assert default_protection(lite) == []  # its last two blocks hold most of the encoder
    ratios = settle_ratios(lite, RatioRequest(ratio=0.3), "even")
    assert ratios.protect == [] and abs(ratios.rule.removed_fraction - 0.3) < 0.005
