"""Cross-Iteration BN (normbench/norms/cross_iteration_bn.py) against direct computations: the
compensation term against autograd's Jacobian, the forward past burn-in against the paper's formula
from the stored iterations, BN during burn-in; binding, simulated devices, backbones, runs, resume,
precise statistics."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY
from torch import nn
from torch.autograd.functional import jacobian

from normbench.backbones import BACKBONES, NormChoice, build_model
from normbench.config import compose
from normbench.norms import build_norm
from normbench.norms._common import NormConfigError
from normbench.norms.cross_iteration_bn import CrossIterationBatchNorm, bind_cross_iteration
from normbench.norms.reference import ref_bn_eval, ref_bn_running, ref_bn_train
from normbench.precise import precise_statistics
from normbench.selfcheck import assert_matches_reference, sample

EPS, MOMENTUM = 1e-5, 0.1
SIZE = 12  # images: the smallest LeNet takes, cheap for every backbone
# (feeding layer, its input shape): a plain conv, a strided dilated grouped conv, a linear
LAYERS = {
    "conv": (lambda: nn.Conv2d(3, 6, 3, padding=1, bias=False), (3, 5, 4)),
    "grouped": (
        lambda: nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2, bias=False),
        (4, 7, 6),
    ),
    "linear": (lambda: nn.Linear(5, 6, bias=False), (5,)),
}


def apply(layer: nn.Module, layer_input: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`layer`'s function with another weight."""
    if isinstance(layer, nn.Linear):
        return F.linear(layer_input, weight)
    return F.conv2d(
        layer_input, weight, None, layer.stride, layer.padding, layer.dilation, layer.groups
    )


def stats(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and E[y^2]."""
    axes = (0, 2, 3) if y.dim() == 4 else (0,)
    return y.mean(axes), y.square().mean(axes)


def own_channel(full: torch.Tensor) -> torch.Tensor:
    """d stat_c / d W_c from a Jacobian (C, *W.shape): each channel's row of its own filter."""
    return torch.stack([full[c, c].flatten() for c in range(full.shape[0])])


def bound(name: str, **options) -> tuple[nn.Module, nn.Module, CrossIterationBatchNorm]:
    """float64 Sequential(feeding layer, cbn), bound; its layer and norm."""
    torch.manual_seed(0)
    layer = LAYERS[name][0]()
    norm = build_norm("cbn", 6, dim=1 if name == "linear" else 2, **options)
    net = nn.Sequential(layer, norm).double()
    assert bind_cross_iteration(net) == 1
    with torch.no_grad():
        norm.weight.add_(torch.randn(6, dtype=torch.float64))
        norm.bias.add_(torch.randn(6, dtype=torch.float64))
    return net, layer, norm


@pytest.mark.parametrize("devices", [1, 2])
@pytest.mark.parametrize("name", LAYERS)
def test_compensation_gradients_equal_autograd_jacobian(name, devices):
    layer = LAYERS[name][0]().double()
    norm = NormChoice("cbn", {}, devices=devices)(6, dim=1 if name == "linear" else 2)
    bind_cross_iteration(nn.Sequential(layer, norm).double())
    source = norm.train_layer.source if devices > 1 else norm.source
    layer_input = sample((4 * devices, *LAYERS[name][1]), seed=5)
    y = layer(layer_input).detach()
    folded = y.reshape(4, devices * 6, *y.shape[2:])  # how the per-device layer sees it
    dmu, dnu = source.statistic_gradients(layer_input, folded)
    weight = layer.weight.detach()
    for d in range(devices):
        mine = layer_input[d::devices]
        want_mu = own_channel(jacobian(lambda w: stats(apply(layer, mine, w))[0], weight))
        want_nu = own_channel(jacobian(lambda w: stats(apply(layer, mine, w))[1], weight))
        rows = slice(d * 6, (d + 1) * 6)
        torch.testing.assert_close(dmu[rows], want_mu, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(dnu[rows], want_nu, rtol=1e-10, atol=1e-12)


def paper_formula(x, p, layer, history, weight_now, compensate=True):
    """Eq. (7)-(9) from scratch: the mean and E[x^2] of this batch (with gradients) and of each
    stored iteration (input, weight then), moved to `weight_now` by the Taylor term of autograd's
    Jacobian (constants), E[x^2] raised to mu^2, averaged; then BN's normalization and affine."""
    mu_now, nu_now = stats(x)
    mus, nus = [mu_now], [nu_now]
    for layer_input, weight in history:
        mu_nu = [stats(apply(layer, layer_input, weight))[i] for i in (0, 1)]
        if compensate:
            for i in (0, 1):
                full = jacobian(lambda w, i=i: stats(apply(layer, layer_input, w))[i], weight)
                mu_nu[i] = mu_nu[i] + (own_channel(full) * (weight_now - weight).flatten(1)).sum(1)
        mus.append(mu_nu[0])
        nus.append(torch.maximum(mu_nu[1], mu_nu[0].square()))
    mu, nu = torch.stack(mus).mean(0), torch.stack(nus).mean(0)
    view = (1, -1, 1, 1) if x.dim() == 4 else (1, -1)
    normalized = (x - mu.view(view)) / torch.sqrt(nu - mu.square() + EPS).view(view)
    return normalized * p["weight"].view(view) + p["bias"].view(view)


@pytest.mark.parametrize("name", LAYERS)
def test_train_and_eval_follow_the_paper_formula(name):
    window, burnin, steps = 3, 2, 7
    _, layer, norm = bound(name, window=window, burnin=burnin)
    stored, outputs = [], []
    for step in range(steps):
        with torch.no_grad():  # the conv's weights move between iterations, as under SGD
            layer.weight.add_(0.2 * torch.randn(layer.weight.shape, dtype=torch.float64))
        layer_input = sample((6, *LAYERS[name][1]), seed=10 + step)
        x = layer(layer_input).detach()  # the forward hook hands the input to the norm
        weight_now = layer.weight.detach().clone()
        history = stored[-(window - 1) :] if step >= burnin else []
        if step < burnin:
            formula = lambda t, p: ref_bn_train(t, p, EPS)  # noqa: E731
        else:
            formula = lambda t, p, h=history: paper_formula(t, p, layer, h, weight_now)  # noqa: E731
        assert_matches_reference(norm, formula, x)
        if step >= burnin:
            stored.append((layer_input, weight_now))
        outputs.append(x)
    params = {k: v.detach() for k, v in norm.named_parameters()}
    naive = paper_formula(x, params, layer, history, weight_now, compensate=False)
    assert not torch.allclose(naive, paper_formula(x, params, layer, history, weight_now))
    assert norm.iteration == steps
    norm.eval()
    running = ref_bn_running(outputs, MOMENTUM, 6)
    x = sample((6, *x.shape[1:]), seed=99)
    assert_matches_reference(norm, lambda t, p: ref_bn_eval(t, p, EPS, *running), x)


def test_burnin_is_bn_bit_for_bit():
    _, layer, norm = bound("conv", burnin=4)
    bn = nn.BatchNorm2d(6).double()
    bn.load_state_dict(norm.state_dict(), strict=False)
    for step in range(4):
        x = layer(sample((3, 3, 5, 4), seed=step)).detach()
        got = [x.clone().requires_grad_(True) for _ in range(2)]
        outs = [norm(got[0]), bn(got[1])]
        for out, t in zip(outs, got):
            (out * torch.arange(out.numel()).reshape(out.shape)).sum().backward()
        assert torch.equal(outs[0], outs[1]) and torch.equal(got[0].grad, got[1].grad)
        for mine, theirs in zip(norm.parameters(), bn.parameters()):
            assert torch.equal(mine.grad, theirs.grad)
        for key, value in bn.state_dict().items():
            assert torch.equal(norm.state_dict()[key], value), key


def test_window_of_one_is_bn_past_burnin():
    _, layer, norm = bound("conv", window=1, burnin=0)
    for step in range(3):
        x = layer(sample((3, 3, 5, 4), seed=step)).detach()
        assert_matches_reference(norm, lambda t, p: ref_bn_train(t, p, EPS), x)


def test_simulated_devices_equal_one_bound_layer_per_device():
    devices, options = 2, {"window": 3, "burnin": 1}
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 6, 3, padding=1, bias=False)
    together = nn.Sequential(conv, NormChoice("cbn", options, devices=devices)(6)).double()
    apart = [nn.Sequential(copy.deepcopy(conv), build_norm("cbn", 6, **options)).double()]
    apart.append(copy.deepcopy(apart[0]))
    for net in (together, *apart):
        bind_cross_iteration(net)
    for step in range(5):
        with torch.no_grad():
            noise = 0.2 * torch.randn(conv.weight.shape, dtype=torch.float64)
            for net in (together, *apart):
                net[0].weight.add_(noise)
        x = sample((devices * 3, 3, 5, 4), seed=step).requires_grad_(True)
        out = together(x)
        (out * out.detach()).sum().backward()
        for d, net in enumerate(apart):
            x_d = x.detach()[d::devices].clone().requires_grad_(True)
            out_d = net(x_d)
            (out_d * out_d.detach()).sum().backward()
            torch.testing.assert_close(out[d::devices], out_d, rtol=1e-9, atol=1e-10)
            torch.testing.assert_close(x.grad[d::devices], x_d.grad, rtol=1e-9, atol=1e-10)
            state = together[1].device_state(d)
            for key, value in net[1].named_buffers():
                torch.testing.assert_close(state[key], value, rtol=1e-9, atol=1e-10, msg=key)
    assert together[1].window_dnu.abs().sum() > 0


def test_binding_refuses_a_norm_without_its_conv_and_an_unbound_layer_refuses_to_go_on():
    with pytest.raises(NormConfigError, match="needs the conv or linear layer with 6 outputs"):
        bind_cross_iteration(nn.Sequential(nn.ReLU(), build_norm("cbn", 6)))
    with pytest.raises(NormConfigError, match="needs the conv or linear"):
        bind_cross_iteration(nn.Sequential(nn.Conv2d(3, 5, 1), build_norm("cbn", 6)))
    assert bind_cross_iteration(nn.Sequential(nn.Conv2d(3, 6, 1), nn.BatchNorm2d(6))) == 0
    unbound = build_norm("cbn", 6, burnin=1)
    unbound(torch.randn(4, 6, 2, 2, requires_grad=True))  # burn-in: BN
    with pytest.raises(RuntimeError, match="bind_cross_iteration"):
        unbound(torch.randn(4, 6, 2, 2, requires_grad=True))
    net, _, norm = bound("conv", burnin=0)
    with pytest.raises(RuntimeError, match="did not run right before it"):
        norm(torch.randn(4, 6, 2, 2, dtype=torch.float64, requires_grad=True))


def train(model: nn.Module, steps: int, batch: int = 2, seed: int = 0) -> float:
    """SGD steps on random images; the last loss."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        loss = model(torch.randn(batch, 1, SIZE, SIZE, generator=generator)).logsumexp(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.item()


def cbn_model(*overrides: str) -> nn.Module:
    torch.manual_seed(0)
    cfg = compose(
        ["norm=cbn", "norm.burnin=1", "norm.window=3", f"data.image_size={SIZE}", *overrides]
    )
    return build_model(cfg)[0]


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_every_backbone_trains_past_burnin(backbone):
    model = cbn_model(f"backbone={backbone}")
    norms = [m for m in model.modules() if isinstance(m, CrossIterationBatchNorm)]
    assert norms and all(m.source is not None for m in norms)
    assert torch.isfinite(torch.tensor(train(model, 3)))
    assert all(m.iteration == 3 and m.window_dnu[:2].abs().sum() > 0 for m in norms)


def test_devices_in_a_backbone_and_state_dict_resume_keeps_the_window():
    model = cbn_model("devices=2")
    train(model, 3, batch=4)
    copy_ = cbn_model("devices=2")
    copy_.load_state_dict(model.state_dict())
    assert "norm1.window_dnu" in model.state_dict()
    assert train(copy_, 2, batch=4, seed=7) == train(model, 2, batch=4, seed=7)


def test_a_deep_copy_feeds_its_norms_from_its_own_layers():
    model = cbn_model()
    train(model, 2)
    duplicate = copy.deepcopy(model)
    assert duplicate.norm1.source.layer is duplicate.conv1
    assert duplicate.norm3.source.layer is duplicate.fc1
    assert train(duplicate, 2, seed=8) == train(model, 2, seed=8)


def test_precise_statistics_are_bns_and_leave_the_window_alone():
    model = cbn_model()
    train(model, 3)
    model.double()
    bn, _ = build_model(compose(["norm=bn", f"data.image_size={SIZE}"]))
    bn.double().load_state_dict(model.state_dict(), strict=False)
    data = [torch.randn(4, 1, SIZE, SIZE, dtype=torch.float64) for _ in range(3)]
    before = copy.deepcopy(model.state_dict())
    got, want = precise_statistics(model, data), precise_statistics(bn, data)
    assert got.layers == 4 and set(got.buffers) == set(want.buffers)
    for key, value in want.buffers.items():
        torch.testing.assert_close(got.buffers[key], value, rtol=1e-12, atol=1e-14)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert model.norm1.iteration == 3


def test_run_completes_past_burnin_with_every_norm_bound(normbench):
    result = normbench("run", *TINY, "norm=cbn", "norm.burnin=3", "norm.window=3", "epochs=1")
    assert result.code == 0, result.err
    record = result.record()
    assert record["status"] == "completed" and record["metrics"]["test_error"] is not None
    layers = list(record["setup"]["norm_layers"].values())
    assert [text.split(", ")[-1] for text in layers] == ["after Conv2d)"] * 2 + [
        "after Linear)"
    ] * 2
