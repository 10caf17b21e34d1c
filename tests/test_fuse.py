"""Folding eval-mode norms into the preceding conv/linear gives the same eval outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from normbench.backbones import build_model
from normbench.config import compose
from normbench.fuse import eval_affine, fold_norms


def _trained(cfg_overrides, steps=5, batch=8, seed=0):
    """A model whose running statistics and affine parameters are not at their initial values."""
    cfg = compose(cfg_overrides)
    torch.manual_seed(seed)
    model, _ = build_model(cfg)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    size = cfg.data.image_size
    for _ in range(steps):
        x = torch.randn(batch, cfg.data.in_channels, size, size) * 3 + 1
        loss = model(x).logsumexp(dim=1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), cfg


@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
def test_lenet_bn_folds_every_norm_and_matches(activation):
    model, cfg = _trained(["norm=bn", f"backbone.activation={activation}"])
    folded, count = fold_norms(model)
    assert count == 4
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-5)
    assert model.training is False and any(
        isinstance(m, nn.BatchNorm2d) for m in model.modules()
    ), "the original model is left as it was"


def test_batch_independent_norms_are_left_alone():
    model, _ = _trained(["norm=gn"])
    folded, count = fold_norms(model)
    assert count == 0
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x))


def test_eval_affine_of_batch_norm_is_the_running_statistics_formula():
    bn = nn.BatchNorm2d(3).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        bn.running_var.copy_(torch.tensor([4.0, 0.25, 1.0]))
        bn.weight.copy_(torch.tensor([2.0, 1.0, -1.0]))
        bn.bias.copy_(torch.tensor([0.0, 1.0, 3.0]))
    scale, shift = eval_affine(bn)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(bn.double()(x), x * scale.view(1, 3, 1, 1) + shift.view(1, 3, 1, 1))
    assert eval_affine(nn.GroupNorm(1, 3)) is None


def test_conv_feeding_two_users_is_not_folded():
    class TwoUsers(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.bn = nn.BatchNorm2d(2)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    model = TwoUsers().eval()
    folded, count = fold_norms(model)
    assert count == 0
    x = torch.randn(2, 1, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x))
