"""normbench.norms._fused: the fast building blocks give torch's values and gradients exactly."""

from __future__ import annotations

import pytest
import torch

from normbench.norms._fused import biased_var_mean, channel_maximum


@pytest.mark.parametrize(
    "y_shape,t_shape",
    [
        ((3, 4, 5, 2), (1, 4, 1, 1)),
        ((3, 4), (1, 4)),
        ((3, 4), (4,)),
        ((3, 4, 5, 2), (3, 4, 1, 1)),
        ((2, 3), (2, 3)),
    ],
)
def test_channel_maximum_matches_torch_maximum_including_ties(y_shape, t_shape):
    g = torch.Generator().manual_seed(0)
    t = torch.randn(t_shape, generator=g, dtype=torch.float64)
    y = torch.randn(y_shape, generator=g, dtype=torch.float64)
    y = torch.where(torch.rand(y_shape, generator=g) < 0.3, t.expand(y_shape), y)  # ~30% exact ties
    grad = torch.randn(y_shape, generator=g, dtype=torch.float64)
    results = []
    for fn in (channel_maximum, torch.maximum):
        y1, t1 = y.clone().requires_grad_(), t.clone().requires_grad_()
        out = fn(y1, t1)
        out.backward(grad)
        results.append((out, y1.grad, t1.grad))
    (out, gy, gt), (ref, ref_gy, ref_gt) = results
    assert (y == t).any()
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    torch.testing.assert_close(gy, ref_gy, rtol=0, atol=0)
    torch.testing.assert_close(gt, ref_gt, rtol=1e-12, atol=1e-12)


def test_channel_maximum_without_grad_is_torch_maximum():
    y, t = torch.randn(2, 3, 4, 4), torch.randn(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.equal(channel_maximum(y.requires_grad_(), t), torch.maximum(y, t))


def test_biased_var_mean_matches_torch():
    x = torch.randn(4, 3, 5, 6, dtype=torch.float64) * 3 + 2
    for dims in ((2, 3), (0, 2, 3), (1,)):
        var, mean = biased_var_mean(x, dims)
        ref_var, ref_mean = torch.var_mean(x, dim=dims, unbiased=False, keepdim=True)
        torch.testing.assert_close(var, ref_var, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(mean, ref_mean, rtol=1e-12, atol=1e-12)
