"""lr scaling rules, the schedules, and the norm-parameter weight-decay group."""

from __future__ import annotations

import math

import pytest

from normbench.backbones import build_model
from normbench.config import compose
from normbench.optim import LRSchedule, build_optimizer, scaled_lr


@pytest.mark.parametrize(
    "rule,expected",
    [("linear", 0.1 * 16 / 256), ("sqrt", 0.1 * math.sqrt(16 / 256)), ("none", 0.1)],
)
def test_lr_scaling_rules(rule, expected):
    assert scaled_lr(compose([f"lr_scaling={rule}"]), 16) == pytest.approx(expected)


def test_cosine_schedule_with_warmup():
    cfg = compose(["epochs=4", "optim.warmup_epochs=1"])
    lr_at = LRSchedule(cfg, 1.0, steps_per_epoch=10)
    # linear warmup over 10 steps
    assert [lr_at(s) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert lr_at(9) == pytest.approx(1.0)
    assert lr_at(10) == pytest.approx(1.0)  # cosine starts at the full lr...
    assert lr_at(25) == pytest.approx(0.5)  # ...is at half way through the 30 post-warmup steps...
    assert lr_at(39) == pytest.approx(0.5 * (1 + math.cos(math.pi * 29 / 30)))  # ...and ends near 0


def test_step_schedule_and_constant():
    cfg = compose(
        ["epochs=10", "optim.schedule=step", "optim.milestones=[0.5,0.8]", "optim.gamma=0.1"]
    )
    lr_at = LRSchedule(cfg, 2.0, steps_per_epoch=10)
    assert (lr_at(49), lr_at(50), lr_at(79), lr_at(80)) == pytest.approx((2.0, 0.2, 0.2, 0.02))
    constant = LRSchedule(compose(["optim.schedule=constant"]), 0.3, steps_per_epoch=7)
    assert {constant(s) for s in range(70)} == {0.3}


def test_norm_weight_decay_gets_its_own_group():
    cfg = compose(["norm=gn", "optim.norm_weight_decay=0"])
    model, norm_layer = build_model(cfg)
    optimizer = build_optimizer(model, norm_layer.built, cfg, 0.1)
    weights, norms = optimizer.param_groups
    assert norms["weight_decay"] == 0 and weights["weight_decay"] == cfg.optim.weight_decay
    norm_params = {id(p) for m in norm_layer.built for p in m.parameters()}
    # 4 layers x (weight, bias)
    assert {id(p) for p in norms["params"]} == norm_params and len(norm_params) == 8
    assert len(weights["params"]) + len(norms["params"]) == len(list(model.parameters()))
    same = build_optimizer(model, norm_layer.built, compose(["norm=gn"]), 0.1)
    assert len(same.param_groups) == 1  # one group when the decays agree
