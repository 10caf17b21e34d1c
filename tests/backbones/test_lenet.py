"""LeNet with every norm: shapes, the d2l layer layout, norm + activation placement, init."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from normbench.backbones import LeNet, NormChoice, build_model, count_parameters
from normbench.config import compose
from normbench.norms import NORMS


def test_lenet_without_norm_has_d2l_parameter_count():
    # d2l LeNet-5 on 28x28: 156 + 2416 + 48120 + 10164 + 850 weights and biases
    model = LeNet(NormChoice("none"), num_classes=10)
    assert count_parameters(model) == 61706


@pytest.mark.parametrize("norm", sorted(NORMS))
@pytest.mark.parametrize("in_channels,image_size", [(1, 28), (3, 32)])
def test_every_norm_forward_backward(norm, in_channels, image_size):
    cfg = compose(
        [f"norm={norm}", f"data.in_channels={in_channels}", f"data.image_size={image_size}"]
    )
    model, _ = build_model(cfg)
    x = torch.randn(4, in_channels, image_size, image_size, requires_grad=True)
    out = model(x)
    assert out.shape == (4, 10)
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    model.eval()
    assert model(x).shape == (4, 10)


def _layer_types(model):
    return [type(m).__name__ for m in model]


def test_norm_then_activation_after_every_hidden_layer():
    model, _ = build_model(compose(["norm=bn"]))
    assert _layer_types(model) == [
        "Conv2d",
        "BatchNorm2d",
        "Sigmoid",
        "AvgPool2d",
        "Conv2d",
        "BatchNorm2d",
        "Sigmoid",
        "AvgPool2d",
        "Flatten",
        "Linear",
        "BatchNorm1d",
        "Sigmoid",
        "Linear",
        "BatchNorm1d",
        "Sigmoid",
        "Linear",
    ]
    convs = [m for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]
    # the norm's beta replaces the bias
    assert [m.bias is None for m in convs] == [True] * 4 + [False]


def test_frn_replaces_norm_and_activation():
    model, _ = build_model(compose(["norm=frn"]))
    types = _layer_types(model)
    assert "Sigmoid" not in types and types.count("FilterResponseNorm") == 4


def test_in_puts_no_norm_on_fully_connected_layers():
    model, choice = build_model(compose(["norm=in"]))
    types = _layer_types(model)
    assert types.count("InstanceNorm2d") == 2 and types.count("Identity") == 2
    assert len(choice.skipped) == 2 and "no 1-D form" in choice.skipped[0]


def test_relu_max_pool_and_xavier_options():
    cfg = compose(
        ["backbone.activation=relu", "backbone.pool=max", "backbone.init=xavier", "norm=none"]
    )
    torch.manual_seed(0)
    model, _ = build_model(cfg)
    types = _layer_types(model)
    assert "ReLU" in types and "MaxPool2d" in types and "Sigmoid" not in types
    fc = model.fc1
    bound = (6 / (fc.in_features + fc.out_features)) ** 0.5
    # xavier-uniform's range
    assert fc.weight.abs().max() <= bound and fc.weight.abs().max() > 0.9 * bound


def test_norm_choice_norm_only():
    """norm_only: the activation-free form for a norm with its own activation, the same norm
    otherwise; both are recorded in `built`, and a norm without a 1-D form is skipped as with
    __call__."""
    choice = NormChoice("frn")
    with_act, without = choice(8), choice.norm_only(8)
    assert (
        with_act.act is True
        and without.act is False
        and "tau" not in dict(without.named_parameters())
    )
    assert choice(8, act=False).act is False
    assert choice.built == [with_act, without, choice.built[2]]
    bn = NormChoice("bn")
    assert type(bn.norm_only(8)) is type(bn(8)) is nn.BatchNorm2d and len(bn.built) == 2
    b0 = NormChoice("evonorm_b0")
    assert isinstance(b0.norm_only(8, dim=1), nn.Identity) and len(b0.skipped) == 1 and not b0.built
    with pytest.raises(ValueError, match="no option act"):
        NormChoice("frn", {"act": False})


@pytest.mark.parametrize("norm", [n for n in sorted(NORMS) if NORMS[n].includes_activation])
def test_lenet_norms_all_keep_their_activation(norm):
    """Every LeNet norm is followed by an activation in d2l, so a norm with its own keeps it
    everywhere."""
    _, choice = build_model(compose([f"norm={norm}"]))
    assert choice.built and all(m.act for m in choice.built)


@pytest.mark.parametrize("norm", ["bn", "frn", "cbn", "gn"])
def test_fc_norm_false_puts_norms_after_the_convolutions_only(norm):
    """backbone.fc_norm=false (the GN paper's placement): norm1/norm2 after the convs, the hidden
    fc layers keep their bias and get the activation alone; the model trains a step."""
    overrides = [f"norm={norm}", "backbone=lenet_relu", "backbone.fc_norm=false"]
    model, _ = build_model(compose(overrides + (["norm.burnin=0"] if norm == "cbn" else [])))
    names = dict(model.named_children())
    assert {"norm1", "norm2"} <= names.keys() and not {"norm3", "norm4"} & names.keys()
    assert isinstance(names["act3"], nn.ReLU) and isinstance(names["act4"], nn.ReLU)
    assert names["fc1"].bias is not None and names["fc2"].bias is not None
    x = torch.randn(4, 1, 28, 28)
    for _ in range(2):
        model(x).sum().backward()
    default, _ = build_model(compose([f"norm={norm}", "backbone=lenet_relu"]))
    assert {"norm3", "norm4"} <= dict(default.named_children()).keys()


def test_fc_norm_takes_a_bool(normbench):
    result = normbench("run", "data=synthetic", "backbone.fc_norm=maybe")
    assert result.code == 2 and "backbone.fc_norm" in result.err and "true or false" in result.err
    assert not (result.root / "runs").exists()
