"""Weight centralization (MABN) and Weight Standardization convs, and their conversion in any
model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normbench.norms import CONV_WEIGHTS, convert_convs
from normbench.norms.conv_weight import CenteredConv2d, StandardizedConv2d


def _conv(cls, seed=0):
    torch.manual_seed(seed)
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=False).double()
    conv.__class__ = cls
    return conv


def test_centered_conv_matches_formula_forward_and_backward():
    conv = _conv(CenteredConv2d)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    w = conv.weight.detach().clone().requires_grad_()
    ref = F.conv2d(x, w - w.mean(dim=(1, 2, 3), keepdim=True), padding=1)
    out = conv(x)
    torch.testing.assert_close(out, ref)
    grad = torch.randn_like(out)
    out.backward(grad)
    gx_conv, gw_conv = x.grad.clone(), conv.weight.grad.clone()
    x.grad = None
    ref.backward(grad)
    torch.testing.assert_close(gx_conv, x.grad)
    torch.testing.assert_close(gw_conv, w.grad)
    assert conv.effective_weight().sum(dim=(1, 2, 3)).abs().max() < 1e-12


def test_standardized_conv_matches_authors_formula():
    conv = _conv(StandardizedConv2d)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    w = conv.weight.detach()
    centred = w - w.mean(dim=(1, 2, 3), keepdim=True)
    ref_w = centred / (centred.view(5, -1).std(dim=1).view(-1, 1, 1, 1) + 1e-5)
    torch.testing.assert_close(conv(x), F.conv2d(x, ref_w, padding=1))
    flat = conv.effective_weight().flatten(1)
    # std/(std+1e-5)
    torch.testing.assert_close(
        flat.std(dim=1), torch.ones(5, dtype=torch.float64), atol=1e-3, rtol=0
    )


@pytest.mark.parametrize("mode", sorted(CONV_WEIGHTS))
def test_convert_convs_keeps_parameters_and_state_dict(mode):
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.Sequential(nn.Conv2d(4, 4, 1)),
        nn.Flatten(),
        nn.Linear(4 * 26 * 26, 2),
    )
    keys, params = list(model.state_dict()), [p.data_ptr() for p in model.parameters()]
    assert convert_convs(model, mode) == 2
    assert [type(m) for m in (model[0], model[2][0])] == [CONV_WEIGHTS[mode]] * 2
    assert type(model[4]) is nn.Linear
    assert list(model.state_dict()) == keys and [p.data_ptr() for p in model.parameters()] == params
    with pytest.raises(ValueError, match="unknown conv weight mode"):
        convert_convs(model, "whiten")
