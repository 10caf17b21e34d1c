"""GN (and GN+WS) by channels per group: norm.channels_per_group=N as the alternative to norm.groups
(the GN paper's Table 3, bottom half): groups = C / N per layer, exactly one of the two set, the
groups recorded per layer."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import QUICK_RUN

from normbench.backbones import build_model
from normbench.config import compose
from normbench.norms import build_norm
from normbench.norms.group_norm import GroupNorm
from normbench.norms.reference import ref_gn
from normbench.selfcheck import assert_matches_reference, assert_same_module, randomize, sample

CPG = ["norm.groups=null"]  # with norm.channels_per_group=N


@pytest.mark.parametrize("name", ["gn", "gn_ws"])
@pytest.mark.parametrize("channels,per_group", [(6, 3), (16, 2), (120, 8), (64, 64), (64, 1)])
def test_groups_are_channels_over_channels_per_group(name, channels, per_group):
    module = build_norm(name, channels, groups=None, channels_per_group=per_group)
    assert module.num_groups == channels // per_group
    assert f"groups={channels // per_group} (channels_per_group={per_group})" in repr(module)


@pytest.mark.parametrize("dim", [2, 1])
def test_matches_the_formula_with_c_over_n_groups_and_gn_with_those_groups(dim):
    shape = (5, 6, 4, 3) if dim == 2 else (5, 6)
    module = randomize(build_norm("gn", 6, dim, groups=None, channels_per_group=3).double())
    x = sample(shape, 3)
    assert_matches_reference(module, lambda t, p: ref_gn(t, p, module.eps, 2), x)
    by_groups = build_norm("gn", 6, dim, groups=2, strict=True).double()
    assert_same_module(module, by_groups, x)


def test_min_channels_per_group_and_strict_do_not_apply():
    module = build_norm(
        "gn", 16, groups=None, channels_per_group=1, min_channels_per_group=4, strict=True
    )
    assert module.num_groups == 16


@pytest.mark.parametrize("name", ["gn", "gn_ws"])
def test_exactly_one_of_groups_and_channels_per_group(name):
    with pytest.raises(
        ValueError,
        match=r"exactly one of groups and channels_per_group.*"
        r"norm\.groups=null for 4 channels per group",
    ):
        build_norm(name, 16, channels_per_group=4)
    with pytest.raises(ValueError, match=f"norm '{name}': groups and channels_per_group are both"):
        build_norm(name, 16, groups=None)
    with pytest.raises(ValueError, match="channels_per_group must be an integer >= 1"):
        build_norm(name, 16, groups=None, channels_per_group=0)


def test_channels_per_group_must_divide_the_layer_width():
    with pytest.raises(
        ValueError,
        match=r"channels_per_group=4 does not divide the layer width "
        r"C=6; divisors of 6: 1, 2, 3, 6",
    ):
        build_norm("gn", 6, groups=None, channels_per_group=4)


@pytest.mark.parametrize("per_group", [64, 32, 16, 8, 4, 2, 1])
def test_the_papers_sweep_builds_resnet50(per_group):
    """Table 3 bottom half: every ResNet-50 width is a multiple of 64."""
    cfg = compose(["backbone=resnet50", "norm=gn", *CPG, f"norm.channels_per_group={per_group}"])
    with torch.device("meta"):
        model, _ = build_model(cfg)
    layers = [m for m in model.modules() if isinstance(m, GroupNorm)]
    assert layers and all(m.num_groups * per_group == m.num_channels for m in layers)


def test_gn_ws_by_channels_per_group_trains_a_step():
    cfg = compose(["norm=gn_ws", *CPG, "norm.channels_per_group=2"])
    model, _ = build_model(cfg)
    model(torch.randn(4, 1, 28, 28)).sum().backward()
    assert [m.num_groups for m in model.modules() if isinstance(m, GroupNorm)] == [3, 8, 60, 42]


def test_a_run_records_the_groups_per_layer(normbench):
    result = normbench("run", *QUICK_RUN, "norm=gn", *CPG, "norm.channels_per_group=2")
    assert result.code == 0, result.err
    (record_file,) = result.root.glob("runs/*/record.json")
    setup = json.loads(record_file.read_text())["setup"]
    assert setup["norm_groups"] == {"norm1": 3, "norm2": 8, "norm3": 60, "norm4": 42}
    assert setup["norm_layers"]["norm1"] == (
        "GroupNorm(6, groups=3 (channels_per_group=2), eps=1e-05, dim=2)"
    )


@pytest.mark.parametrize(
    "overrides,words",
    [
        (
            ["norm.channels_per_group=2"],
            ["exactly one of groups and channels_per_group", "add norm.groups=null"],
        ),
        ([*CPG], ["both null", "norm.channels_per_group=N"]),
        ([*CPG, "norm.channels_per_group=4"], ["does not divide the layer width C=6"]),
    ],
)
def test_bad_settings_are_one_line_and_write_nothing(normbench, overrides, words):
    result = normbench("run", *QUICK_RUN, "norm=gn", *overrides)
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "cannot build backbone=lenet with norm=gn" in lines[0]
    assert all(word in lines[0] for word in words), lines[0]
    assert not result.root.exists() or not any(result.root.rglob("record.json"))
