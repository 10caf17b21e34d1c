"""Paper-formula references for every registered norm, in plain float64 tensor math: `normbench
check` and the tests hold the layers against these. Each takes the input `x` and a dict `p` of
parameters (weight, bias, and tau / eps_l / v where the norm has them)."""

from __future__ import annotations

import math

import torch


def _bcast(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return p.view(1, -1, *([1] * (x.dim() - 2)))


def _affine(xh, p, x):
    return xh * _bcast(p["weight"], x) + _bcast(p["bias"], x)


def _normalize(x, axes, eps):
    mean = x.mean(dim=axes, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=axes, keepdim=True)  # biased
    return (x - mean) / torch.sqrt(var + eps)


def ref_bn_train(x, p, eps):
    axes = (0,) + tuple(range(2, x.dim()))
    return _affine(_normalize(x, axes, eps), p, x)


def ref_bn_running(batches, momentum, c):
    rm, rv = torch.zeros(c, dtype=torch.float64), torch.ones(c, dtype=torch.float64)
    for x in batches:
        flat = x.detach().transpose(0, 1).reshape(c, -1)
        n = flat.shape[1]
        mean = flat.mean(dim=1)
        var_unbiased = ((flat - mean[:, None]) ** 2).sum(dim=1) / (n - 1)
        rm = (1 - momentum) * rm + momentum * mean
        rv = (1 - momentum) * rv + momentum * var_unbiased
    return rm, rv


def ref_bn_eval(x, p, eps, rm, rv):
    return _affine((x - _bcast(rm, x)) / torch.sqrt(_bcast(rv, x) + eps), p, x)


def ref_ln(x, p, eps):
    return _affine(_normalize(x, tuple(range(1, x.dim())), eps), p, x)


def ref_in(x, p, eps):
    return _affine(_normalize(x, (2, 3), eps), p, x)


def ref_gn(x, p, eps, groups):
    n, c = x.shape[:2]
    xg = x.reshape(n, groups, -1)  # channels of a group are contiguous, with their (H, W)
    return _affine(_normalize(xg, (2,), eps).reshape(x.shape), p, x)


def ref_l2norm(x, p, eps):
    """ParseNet/SSD: gamma * x / sqrt(sum over channels of x^2 + eps) + beta, per position."""
    norm = torch.sqrt((x**2).sum(dim=1, keepdim=True) + eps)
    return _affine(x / norm, p, x)


def ref_frn(x, p, eps, act=True):
    """FRN: y = gamma * x / sqrt(nu2 + eps) + beta; with act, the TLU z = max(y, tau); act=False:
    y."""
    nu2 = (x**2).mean(dim=(2, 3), keepdim=True) if x.dim() == 4 else x**2
    e = eps + _bcast(p["eps_l"].abs(), x) if "eps_l" in p else eps
    y = _affine(x / torch.sqrt(nu2 + e), p, x)
    if not act:
        return y
    return torch.where(y > _bcast(p["tau"], x), y, _bcast(p["tau"], x))


def ref_evonorm_s0(x, p, eps, groups, act=True):
    """x * sigmoid(v x) / group std * gamma + beta; act=False: x / group std * gamma + beta."""
    n = x.shape[0]
    xg = x.reshape(n, groups, -1)  # as GN: a group's channels are contiguous, with their (H, W)
    var = ((xg - xg.mean(dim=2, keepdim=True)) ** 2).mean(dim=2, keepdim=True)  # biased
    std = torch.sqrt(var + eps).expand(xg.shape).reshape(x.shape)
    num = x * torch.sigmoid(_bcast(p["v"], x) * x) if act else x
    return _affine(num / std, p, x)


def ref_none(x, p):
    return x


def ref_mabn(x, p, eps, mode):
    """MABN at its first iterations (raw E[x^2], r = 1) in train mode, or fresh (running_var = 1) in
    eval."""
    if mode == "eval":
        return _affine(x / math.sqrt(1.0 + eps), p, x)
    return _affine(
        x / torch.sqrt((x**2).mean(dim=(0,) + tuple(range(2, x.dim())), keepdim=True) + eps), p, x
    )


def _axes(x):
    return (0,) + tuple(range(2, x.dim()))


def _biased_var(x, axes):
    return ((x - x.mean(dim=axes, keepdim=True)) ** 2).mean(dim=axes, keepdim=True)


def ref_brn_limits(t, r_max, d_max, start, r_end, d_end):
    """Paper's warm-up: r_max 1 -> r_max and d_max 0 -> d_max, linear from step `start` to
    `*_end`."""

    def ramp(end):
        if t < start:
            return 0.0
        return 1.0 if end == start else min(1.0, (t - start) / (end - start))

    return 1.0 + (r_max - 1.0) * ramp(r_end), d_max * ramp(d_end)


def ref_brn_train(x, p, eps, rm, rv, rmax, dmax):
    """Batch Renorm, Algorithm 1: r and d from the running stats before the update, no gradient
    through them."""
    axes = _axes(x)
    mean = x.mean(dim=axes, keepdim=True)
    std_b = torch.sqrt(_biased_var(x, axes) + eps)
    sigma = torch.sqrt(_bcast(rv, x) + eps)
    r = (std_b / sigma).detach().clamp(1.0 / rmax, rmax)
    d = ((mean - _bcast(rm, x)) / sigma).detach().clamp(-dmax, dmax)
    return _affine((x - mean) / std_b * r + d, p, x)


def ref_gbn_train(x, p, eps, sizes):
    """Ghost BN: BN (the formula) on each virtual batch of consecutive images, one affine."""
    return torch.cat([ref_bn_train(chunk, p, eps) for chunk in x.split(sizes)])


def ref_evonorm_b0(x, p, eps, running_var=None, act=True):
    """EvoNorm-B0: x / max(sqrt(s2_b + eps), v x + sqrt(s2_i + eps)) * gamma + beta; biased
    variances; s2_b is the batch variance over (N, H, W) in training, `running_var` in eval.
    act=False: x / sqrt(s2_b + eps) * gamma + beta (no v, no instance term)."""
    var_b = _biased_var(x, (0, 2, 3)) if running_var is None else _bcast(running_var, x)
    left = torch.sqrt(var_b + eps).expand(x.shape)
    if not act:
        return _affine(x / left, p, x)
    right = _bcast(p["v"], x) * x + torch.sqrt(_biased_var(x, (2, 3)) + eps)
    return _affine(x / torch.where(left > right, left, right), p, x)


def ref_evonorm_b0_running(batches, momentum, c):
    rv = torch.ones(c, dtype=torch.float64)
    for x in batches:
        rv = (1 - momentum) * rv + momentum * _biased_var(x.detach(), (0, 2, 3)).view(-1)
    return rv
