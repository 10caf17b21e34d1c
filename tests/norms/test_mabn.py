"""MABN (Yan et al., ICLR 2020) against an independent step-by-step reference written from the
paper's equations (plain Python lists as ring buffers), in float64.

The reference below restates the algorithm of normbench/norms/mabn.py's docstring:
  iteration t (1-based count of training forwards), B = buffer_size, W = warmup_iters, R =
  renorm_iters chi2 = E[x^2] over (N, H, W) (dim=1: over N); var = chi2 if t <= B or t < W else mean
  of the last B chi2 r = 1 if t <= max(R, W) else clip(sqrt(var+eps)/sqrt(running_var+eps), 1/r_max,
  r_max)  (running_var before update) y = w * r * x / sqrt(var+eps) + b;  running_var = m *
  running_var + (1 - m) * var
  backward: g = dy*w*r; psi = E[g*z]; psibar = psi (raw step) or mean of the last B psi written by
  backwards dx = (g - z*psibar)/sqrt(var+eps); dw = sum(dy*r*z); db = sum(dy)
"""

from __future__ import annotations

import copy
import io
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from normbench.backbones import build_model
from normbench.config import compose
from normbench.norms import NORMS, NormConfigError, build_norm, norm_options
from normbench.norms.conv_weight import CenteredConv2d
from normbench.norms.mabn import MovingAverageBatchNorm

F64 = torch.float64
C = 5
TOL = dict(rtol=1e-10, atol=1e-12)
SMALL = dict(buffer_size=4, warmup_iters=6, renorm_iters=10, r_max=1.5, momentum=0.9, eps=1e-3)


# ------------------------------------------------------------------------------------ reference
class Reference:
    """MABN from the equations; the rings are Python lists of (C,) tensors."""

    def __init__(
        self,
        c,
        eps=1e-5,
        momentum=0.98,
        buffer_size=16,
        warmup_iters=100,
        renorm_iters=1000,
        r_max=5.0,
    ):
        self.eps, self.momentum, self.b, self.w_it, self.r_it, self.r_max = (
            eps,
            momentum,
            buffer_size,
            warmup_iters,
            renorm_iters,
            r_max,
        )
        self.running_var = torch.ones(c, dtype=F64)
        self.chi2s: list[torch.Tensor] = []
        self.psis: list[torch.Tensor] = []
        self.t = 0

    @staticmethod
    def axes(x):
        return (0, 2, 3) if x.dim() == 4 else (0,)

    @staticmethod
    def bc(v, x):
        return v.view(1, -1, *([1] * (x.dim() - 2)))

    def forward(self, x, w, b):
        self.t += 1
        t = self.t
        chi2 = (x * x).mean(dim=self.axes(x))
        self.chi2s = (self.chi2s + [chi2])[-self.b :]
        raw = t <= self.b or t < self.w_it
        var = chi2 if raw else sum(self.chi2s) / len(self.chi2s)
        assert raw or len(self.chi2s) == self.b
        sigma = torch.sqrt(var + self.eps)
        if t <= max(self.r_it, self.w_it):
            r = torch.ones_like(var)
        else:
            r = (sigma / torch.sqrt(self.running_var + self.eps)).clamp(1 / self.r_max, self.r_max)
        self.running_var = self.momentum * self.running_var + (1 - self.momentum) * var
        z = x / self.bc(sigma, x)
        y = self.bc(w * r, x) * z + self.bc(b, x)
        return y, dict(x=x, w=w, z=z, sigma=sigma, r=r, raw=raw, var=var)

    def backward(self, ctx, dy):
        x, z, sigma, r = ctx["x"], ctx["z"], ctx["sigma"], ctx["r"]
        g = dy * self.bc(ctx["w"] * r, x)
        psi = (g * z).mean(dim=self.axes(x))
        self.psis = (self.psis + [psi])[-self.b :]
        psibar = psi if ctx["raw"] else sum(self.psis) / len(self.psis)
        dx = (g - z * self.bc(psibar, x)) / self.bc(sigma, x)
        dw = (dy * self.bc(r, x) * z).sum(dim=self.axes(x))
        db = dy.sum(dim=self.axes(x))
        return dx, dw, db


def batch(t, dim=2, n=3, c=C, seed=0):
    """Scripted batch t: per-channel offsets and scales that drift, and at t >= 15 jump (channel 0
    up, channel 1 down) so that r hits both clip bounds for a while."""
    g = torch.Generator().manual_seed(1000 * seed + t)
    shape = (n, c, 4, 3) if dim == 2 else (n, c)
    scale = torch.linspace(0.5, 2.0, c, dtype=F64) * (1 + 0.3 * math.sin(t))
    if t >= 15:
        scale[0] *= 4.0
        scale[1] *= 0.25
    offset = torch.linspace(-1.0, 1.5, c, dtype=F64)
    view = (1, c) + (1,) * (len(shape) - 2)
    return torch.randn(shape, generator=g, dtype=F64) * scale.view(view) + offset.view(view)


def upstream(t, shape, seed=0):
    return torch.randn(
        shape, generator=torch.Generator().manual_seed(5000 + 1000 * seed + t), dtype=F64
    )


def make(dim=2, c=C, **opts):
    m = build_norm("mabn", c, dim, **opts).double()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        m.weight.copy_(1 + 0.5 * torch.randn(c, generator=g, dtype=F64))
        m.bias.copy_(torch.randn(c, generator=g, dtype=F64))
    return m


def train_step(m, x, dy):
    """One training forward + backward; returns (y, dx, dweight, dbias)."""
    x = x.detach().clone().requires_grad_(True)
    m.zero_grad(set_to_none=True)
    y = m(x)
    (y * dy).sum().backward()
    return y.detach(), x.grad, m.weight.grad.clone(), m.bias.grad.clone()


def sgd(m, lr=0.05):
    with torch.no_grad():
        m.weight.sub_(lr * m.weight.grad)
        m.bias.sub_(lr * m.bias.grad)


def params(m):
    return m.weight.detach().clone(), m.bias.detach().clone()


# ------------------------------------------------------------------------ warm-up == the formula
@pytest.mark.parametrize("dim", [2, 1])
def test_warmup_backward_equals_autograd_of_centering_free_formula(dim):
    m = make(dim)  # defaults: raw statistics and r = 1 for the first 99 iterations
    eps = m.eps
    for t in range(1, 4):
        x, dy = batch(t, dim), upstream(t, batch(t, dim).shape)
        got = train_step(m, x, dy)
        xr = x.clone().requires_grad_(True)
        w, b = (p.detach().clone().requires_grad_(True) for p in (m.weight, m.bias))
        axes = Reference.axes(x)
        y = Reference.bc(w, x) * xr / torch.sqrt(
            (xr * xr).mean(dim=axes, keepdim=True) + eps
        ) + Reference.bc(b, x)
        (y * dy).sum().backward()
        for a, e, what in zip(
            got, (y.detach(), xr.grad, w.grad, b.grad), ("y", "dx", "dweight", "dbias")
        ):
            torch.testing.assert_close(a, e, **TOL, msg=lambda s, what=what: f"t={t} {what}: {s}")
        # centering-free: the affine-free output is not zero-mean (a BN would be)
        assert (got[0] - Reference.bc(m.bias.detach(), x)).mean(dim=axes).abs().max() > 1e-3
        sgd(m)


# ------------------------------------------------------------ every phase, step by step vs
# reference
@pytest.mark.parametrize("dim", [2, 1])
def test_follows_reference_across_all_phases(dim):
    m = make(dim, **SMALL)
    ref = Reference(C, **SMALL)
    rs, raws = [], []
    for t in range(1, 31):
        x, dy = batch(t, dim), upstream(t, batch(t, dim).shape)
        w, b = params(m)
        y_ref, ctx = ref.forward(x, w, b)
        grads_ref = ref.backward(ctx, dy)
        got = train_step(m, x, dy)
        for a, e, what in zip(got, (y_ref, *grads_ref), ("y", "dx", "dweight", "dbias")):
            torch.testing.assert_close(a, e, **TOL, msg=lambda s, what=what: f"t={t} {what}: {s}")
        torch.testing.assert_close(m.running_var, ref.running_var, **TOL)
        assert int(m.iters) == t and int(m.backward_iters) == t and m.iteration == t
        rs.append(ctx["r"])
        raws.append(ctx["raw"])
        sgd(m)
    # the script crossed every boundary: raw -> averaged at t=6, r = 1 -> clipped at t=11, clip hit
    # both ways
    assert raws[:5] == [True] * 5 and not any(raws[5:])
    assert all(torch.all(r == 1) for r in rs[:10])
    released = torch.stack(rs[10:])
    assert (released == SMALL["r_max"]).any() and (released == 1 / SMALL["r_max"]).any()
    inside = (released > 1 / SMALL["r_max"]) & (released < SMALL["r_max"]) & (released != 1)
    assert inside.any()


def test_ring_buffers_hold_the_last_statistics():
    m = make(2, **SMALL)
    ref = Reference(C, **SMALL)
    # after t=7: slots 0, 1, 2, 3 hold iterations 5, 6, 7, 4 (slot (t - 1) % 4)
    for t in range(1, 8):
        x, dy = batch(t), upstream(t, batch(t).shape)
        _, ctx = ref.forward(x, *params(m))
        ref.backward(ctx, dy)
        train_step(m, x, dy)
    order = [1, 2, 3, 0]  # indices into the reference's lists of iterations 4, 5, 6, 7
    torch.testing.assert_close(m.chi2_buffer, torch.stack([ref.chi2s[i] for i in order]), **TOL)
    torch.testing.assert_close(m.psi_buffer, torch.stack([ref.psis[i] for i in order]), **TOL)


# ----------------------------------------------------- forward without backward, accumulation, eval
def test_forward_without_backward_and_eval_follow_the_documented_semantics():
    """A training forward under no_grad is an iteration without psi; eval changes nothing;
    afterwards training continues exactly like the reference (which never saw the eval forwards)."""
    m = make(2, **SMALL)
    ref = Reference(C, **SMALL)
    for t in range(1, 21):
        x, dy = batch(t), upstream(t, batch(t).shape)
        w, b = params(m)
        if t in (3, 8, 12):  # training-mode forward, no backward
            y_ref, _ = ref.forward(x, w, b)
            with torch.no_grad():
                y = m(x)
            torch.testing.assert_close(y, y_ref, **TOL)
            assert int(m.backward_iters) == len([s for s in range(1, t + 1) if s not in (3, 8, 12)])
        else:
            y_ref, ctx = ref.forward(x, w, b)
            grads_ref = ref.backward(ctx, dy)
            got = train_step(m, x, dy)
            for a, e in zip(got, (y_ref, *grads_ref)):
                torch.testing.assert_close(a, e, **TOL)
            sgd(m)
        # eval in between: running_var, grads through the eval form, no state change
        if t in (5, 11, 16):
            state = copy.deepcopy(m.state_dict())
            m.eval()
            xe = batch(100 + t).requires_grad_(True)
            ye = m(xe)
            expected = Reference.bc(m.weight, xe) * xe / Reference.bc(
                torch.sqrt(m.running_var + m.eps), xe
            ) + Reference.bc(m.bias, xe)
            torch.testing.assert_close(ye, expected, **TOL)
            ye.sum().backward()
            torch.testing.assert_close(
                xe.grad,
                (
                    Reference.bc(m.weight, xe) / Reference.bc(torch.sqrt(m.running_var + m.eps), xe)
                ).expand_as(xe),
                **TOL,
            )
            m.zero_grad(set_to_none=True)
            with torch.inference_mode():
                m(batch(200 + t))
            for k, v in m.state_dict().items():
                assert torch.equal(v, state[k]), k
            assert m.iteration == t
            m.train()
        torch.testing.assert_close(m.running_var, ref.running_var, **TOL)


def test_two_forwards_then_one_backward_each_backward_uses_its_own_forward():
    m = make(2, **SMALL)
    ref = Reference(C, **SMALL)
    for t in range(1, 13):  # into the averaged, released phase
        x, dy = batch(t), upstream(t, batch(t).shape)
        _, ctx = ref.forward(x, *params(m))
        ref.backward(ctx, dy)
        train_step(m, x, dy)
    xa, xb = batch(13).requires_grad_(True), batch(14).requires_grad_(True)
    da, db = upstream(13, xa.shape), upstream(14, xb.shape)
    w, b = params(m)
    ya_ref, ctx_a = ref.forward(xa.detach(), w, b)
    yb_ref, ctx_b = ref.forward(xb.detach(), w, b)
    m.zero_grad(set_to_none=True)
    ya, yb = m(xa), m(xb)
    ((ya * da).sum() + (yb * db).sum()).backward()  # autograd runs b's backward first, then a's
    gb_ref = ref.backward(ctx_b, db)
    ga_ref = ref.backward(ctx_a, da)
    torch.testing.assert_close(ya, ya_ref, **TOL)
    torch.testing.assert_close(yb, yb_ref, **TOL)
    torch.testing.assert_close(xa.grad, ga_ref[0], **TOL)
    torch.testing.assert_close(xb.grad, gb_ref[0], **TOL)
    torch.testing.assert_close(m.weight.grad, ga_ref[1] + gb_ref[1], **TOL)
    torch.testing.assert_close(m.bias.grad, ga_ref[2] + gb_ref[2], **TOL)
    assert m.iteration == 14 and int(m.backward_iters) == 14


# ----------------------------------------------------------------------------------------- resume
@pytest.mark.parametrize("k", [3, 7, 10])
def test_resume_from_state_dict_is_bit_identical(k):
    a = make(2, **SMALL)
    for t in range(1, k + 1):
        train_step(a, batch(t), upstream(t, batch(t).shape))
        sgd(a)
    blob = io.BytesIO()
    torch.save(a.state_dict(), blob)
    blob.seek(0)
    # fresh: counters 0, rings empty, other parameters
    b = build_norm("mabn", C, 2, **SMALL).double()
    assert b.iteration == 0
    b.load_state_dict(torch.load(blob))
    assert b.iteration == k and b._backward_iters == k
    for t in range(k + 1, k + 9):  # crosses raw -> averaged and/or r release after the resume
        x, dy = batch(t), upstream(t, batch(t).shape)
        out_a, out_b = train_step(a, x, dy), train_step(b, x, dy)
        for u, v in zip(out_a, out_b):
            assert torch.equal(u, v), t
        sgd(a), sgd(b)
    for (name, u), (_, v) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(u, v), name
    assert set(a.state_dict()) == {
        "weight",
        "bias",
        "running_var",
        "chi2_buffer",
        "psi_buffer",
        "iters",
        "backward_iters",
    }


def test_copies_and_dtype_conversion_continue_exactly():
    """deepcopy mid-run continues bit-identically; a layer that ran in float32, then .double() and
    loaded a float64 state continues exactly like the float64 original (its cached ring views and
    eps follow)."""
    a = make(2, **SMALL)
    for t in range(1, 8):
        train_step(a, batch(t), upstream(t, batch(t).shape))
    b = copy.deepcopy(a)
    c = build_norm("mabn", C, 2, **SMALL)
    # float32 views and constants in use
    train_step(c, batch(1).float(), upstream(1, batch(1).shape).float())
    c.double().load_state_dict(a.state_dict())
    for t in range(8, 16):
        x, dy = batch(t), upstream(t, batch(t).shape)
        outs = [train_step(m, x, dy) for m in (a, b, c)]
        for other in outs[1:]:
            for u, v in zip(outs[0], other):
                assert torch.equal(u, v), t
    for m in (b, c):
        for (name, u), (_, v) in zip(a.state_dict().items(), m.state_dict().items()):
            assert torch.equal(u, v), name


def test_double_backward_is_refused():
    m = make(2)
    x = batch(1).requires_grad_(True)
    y = m(x)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad((y * y).sum(), x, create_graph=True)


# ---------------------------------------------------------------------------------------- no sync
def test_training_step_never_reads_a_device_tensor_on_the_host(monkeypatch):
    """.item(), bool(), int(), float(), index use and tolist() of any tensor raise during train
    steps covering every phase (the official code's iters.item() would fail here)."""
    m = make(2, **SMALL)
    m1 = make(1, **SMALL)
    steps = [
        (batch(t), upstream(t, batch(t).shape), batch(t, 1), upstream(t, batch(t, 1).shape))
        for t in range(1, 14)
    ]

    def host_read(*args, **kwargs):
        raise AssertionError("host read of a tensor during a MABN training step")

    with monkeypatch.context() as patch:
        for name in ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__"):
            patch.setattr(torch.Tensor, name, host_read)
        with pytest.raises(AssertionError, match="host read"):  # the trap is armed
            torch.ones(()).item()
        with pytest.raises(AssertionError, match="host read"):
            bool(torch.ones(()))
        for x, dy, x1, dy1 in steps:
            train_step(m, x, dy)
            train_step(m1, x1, dy1)
    assert m.iteration == 13 and int(m.backward_iters) == 13


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_device_sync_on_cuda():
    m = build_norm("mabn", 64, 2, **SMALL).cuda()
    x = torch.randn(4, 64, 8, 8, device="cuda", requires_grad=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(14):
            m(x).square().sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert m.iteration == 14


# ----------------------------------------------------------------------------- build and options
REPO = Path(__file__).resolve().parents[2]


def test_config_spec_and_defaults():
    cfg = OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "norm" / "mabn.yaml"))
    assert cfg.pop("name") == "mabn"
    assert (
        cfg
        == norm_options("mabn")
        == dict(
            eps=1e-5,
            momentum=0.98,
            buffer_size=16,
            warmup_iters=100,
            renorm_iters=1000,
            r_max=5.0,
            center_weights=True,
        )
    )
    spec = NORMS["mabn"]
    assert (spec.batch_dependent, spec.includes_activation, spec.supports_1d, spec.conv_weight) == (
        True,
        False,
        True,
        "center",
    )
    assert "Yan" in spec.description and "\n" not in spec.description
    for dim in (1, 2):
        m = build_norm("mabn", 16, dim, **cfg)
        assert isinstance(m, MovingAverageBatchNorm)
        assert {k: p.shape for k, p in m.named_parameters()} == {"weight": (16,), "bias": (16,)}
        assert m.running_var.shape == (16,) and m.chi2_buffer.shape == m.psi_buffer.shape == (
            16,
            16,
        )
        assert torch.all(m.running_var == 1)
        assert (m.uses_batch_stats(99), m.uses_batch_stats(100), m.fixed_r_iters) == (
            True,
            False,
            1000,
        )
    r = repr(build_norm("mabn", 8))
    assert all(
        s in r
        for s in (
            "8",
            "eps=1e-05",
            "momentum=0.98",
            "buffer_size=16",
            "warmup_iters=100",
            "renorm_iters=1000",
            "r_max=5.0",
            "dim=2",
        )
    )


@pytest.mark.parametrize(
    "option,bad",
    [
        ("eps", 0),
        ("eps", -1e-5),
        ("momentum", 1.5),
        ("momentum", -0.1),
        ("momentum", True),
        ("buffer_size", 0),
        ("buffer_size", 2.0),
        ("warmup_iters", -1),
        ("renorm_iters", "10"),
        ("r_max", 0.5),
        ("r_max", math.inf),
        ("center_weights", "yes"),
        ("center_weights", 1),
    ],
)
def test_bad_options_name_the_option(option, bad):
    with pytest.raises(NormConfigError, match=option):
        build_norm("mabn", 8, **{option: bad})


def test_wrong_layout_rejected():
    with pytest.raises(ValueError, match="dim=2"):
        build_norm("mabn", 8, 2)(torch.randn(4, 8))
    with pytest.raises(ValueError, match="dim=1"):
        build_norm("mabn", 8, 1)(torch.randn(4, 8, 3, 3))


def test_eval_affine_matches_eval_forward():
    m = make(2, **SMALL)
    for t in range(1, 6):
        train_step(m, batch(t), upstream(t, batch(t).shape))
    m.eval()
    scale, shift = m.eval_affine()
    x = batch(50)
    torch.testing.assert_close(m(x), Reference.bc(scale, x) * x + Reference.bc(shift, x), **TOL)


def test_lenet_gets_centred_convs_unless_center_weights_false():
    model, choice = build_model(compose(["norm=mabn"]))
    convs = [mod for mod in model.modules() if isinstance(mod, nn.Conv2d)]
    assert len(convs) == 2 and all(type(c) is CenteredConv2d for c in convs)
    norms = [mod for mod in model.modules() if isinstance(mod, MovingAverageBatchNorm)]
    assert len(norms) == 4 and [n.dim for n in norms] == [2, 2, 1, 1]
    model.train()
    model(torch.randn(2, 1, 28, 28)).logsumexp(dim=1).sum().backward()
    assert all(n.iteration == 1 and int(n.backward_iters) == 1 for n in norms)

    plain, _ = build_model(compose(["norm=mabn", "norm.center_weights=false"]))
    convs = [mod for mod in plain.modules() if isinstance(mod, nn.Conv2d)]
    assert len(convs) == 2 and all(type(c) is nn.Conv2d for c in convs)
