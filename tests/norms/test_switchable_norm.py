"""Switchable Normalization (sn) in float64: the layer against its formula reference (output and
every gradient, train and eval, both dims), one saturated importance weight equals IN / LN / BN
exactly, the running statistics, simulated devices, population statistics, every backbone and a
`normbench run`."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY

from normbench.backbones import BACKBONES, build_model
from normbench.config import compose
from normbench.norms import NORMS, NormConfigError, PerDevice, build_norm
from normbench.norms.reference import ref_bn_running
from normbench.norms.reference_devices import DEVICES, check_per_device, train_step
from normbench.norms.switchable_norm import (
    SwitchableNorm,
    importance_weights,
    switchable_norm_reference,
)
from normbench.precise import precise_statistics
from normbench.selfcheck import assert_matches_reference, randomize, sample

TOL = {"rtol": 1e-9, "atol": 1e-10}
C = 6
SHAPES = {2: (5, C, 4, 3), 1: (5, C)}  # all sizes different: a wrong axis shows


@pytest.fixture
def one_thread():
    """Tiny tensors: one intra-op thread is as fast, and stays fast on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _sn(dim: int, **options) -> SwitchableNorm:
    return randomize(build_norm("sn", C, dim, **options).double())


def _sgd_step(module: torch.nn.Module, x: torch.Tensor) -> None:
    """One training forward, backward of a random projection and an SGD step."""
    module.train()
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=x.dtype)
    (module(x) * g).sum().backward()
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.sub_(0.1 * parameter.grad)
            parameter.grad = None


# ------------------------------------------------------------------------ registry / options
def test_registered_with_its_traits_and_reference():
    spec = NORMS["sn"]
    assert (spec.batch_dependent, spec.includes_activation, spec.supports_1d) == (True, False, True)
    assert spec.per_device and not spec.syncable and spec.reference is switchable_norm_reference


def test_parameters_buffers_and_initial_importance():
    for dim, branches in ((2, 3), (1, 2)):
        layer = build_norm("sn", C, dim)
        assert {k: tuple(p.shape) for k, p in layer.named_parameters()} == {
            "weight": (C,),
            "bias": (C,),
            "mean_weight": (branches,),
            "var_weight": (branches,),
        }
        assert [k for k, _ in layer.named_buffers()] == [
            "running_mean",
            "running_var",
            "num_batches_tracked",
        ]
        uniform = [1 / branches] * branches
        expected = uniform if dim == 2 else [0.0, *uniform]  # the fc form has no IN branch
        for weights in layer.importance().values():
            assert weights == pytest.approx(expected, rel=1e-7)


@pytest.mark.parametrize(
    "options,message",
    [
        ({"bn_average": "ema"}, "bn_average must be one of moving_average, batch_average"),
        ({"momentum": 1.5}, "momentum"),
        ({"eps": 0}, "eps"),
    ],
)
def test_bad_options_are_one_line_errors(options, message):
    with pytest.raises(NormConfigError, match=message):
        build_norm("sn", C, 2, **options)


def test_one_value_per_channel_cannot_train():
    layer = build_norm("sn", C, 1)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        layer(torch.randn(1, C))
    layer.eval()
    assert layer(torch.randn(1, C)).shape == (1, C)  # eval: the running statistics


# ------------------------------------------------------------------------ formula reference
@pytest.mark.parametrize("bn_average", ["moving_average", "batch_average"])
@pytest.mark.parametrize("dim", [2, 1])
def test_matches_reference_in_train_and_in_eval_after_training(dim, bn_average):
    layer = _sn(dim, eps=1e-3, bn_average=bn_average)
    for seed in (3, 4):  # a fresh layer's step, then a step from moved parameters
        layer.train()
        assert_matches_reference(
            layer, switchable_norm_reference(layer, True), sample(SHAPES[dim], seed)
        )
        _sgd_step(layer, sample(SHAPES[dim], seed + 10))
        layer.eval()
        reference = switchable_norm_reference(layer, False)
        assert_matches_reference(layer, reference, sample(SHAPES[dim], seed + 20))
    assert layer.num_batches_tracked == 4


@pytest.mark.parametrize("dim", [2, 1])
def test_running_statistics_follow_the_formulas(dim):
    moving, average = _sn(dim, momentum=0.3), _sn(dim, bn_average="batch_average")
    batches = [sample(SHAPES[dim], seed) for seed in range(4)]
    with torch.no_grad():
        for x in batches:
            moving(x), average(x)
    mean, var = ref_bn_running(batches, 0.3, C)  # BN's: zeros / ones, unbiased, torch momentum
    torch.testing.assert_close(moving.running_mean, mean, **TOL)
    torch.testing.assert_close(moving.running_var, var, **TOL)
    # batch average: the mean over the batches of each batch's mean and unbiased variance
    flat = [x.transpose(0, 1).reshape(C, -1) for x in batches]
    torch.testing.assert_close(average.running_mean, torch.stack([f.mean(1) for f in flat]).mean(0))
    torch.testing.assert_close(average.running_var, torch.stack([f.var(1) for f in flat]).mean(0))


# ------------------------------------------------------- one saturated weight == IN / LN / BN
def _saturate(layer: SwitchableNorm, branch: str) -> None:
    """Logits 100 for `branch`, 0 for the others: its softmax weight is 1 - O(e^-100)."""
    index = layer.branches.index(branch)
    with torch.no_grad():
        for logits in (layer.mean_weight, layer.var_weight):
            logits.zero_()
            logits[index] = 100.0


def _assert_same(sn: SwitchableNorm, other: torch.nn.Module, x: torch.Tensor) -> None:
    """Equal output and gradients w.r.t. x, weight and bias."""
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=x.dtype)
    results = []
    for module in (sn, other):
        inputs = x.clone().requires_grad_(True)
        out = module(inputs)
        grads = torch.autograd.grad((out * g).sum(), [inputs, module.weight, module.bias])
        results.append([out, *grads])
    for name, mine, theirs in zip(["output", "d/dx", "d/dweight", "d/dbias"], *results):
        torch.testing.assert_close(mine, theirs, **TOL, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize(
    "branch,dim,other",
    [("in", 2, "in"), ("ln", 2, "ln"), ("ln", 1, "ln"), ("bn", 2, "bn"), ("bn", 1, "bn")],
)
def test_a_saturated_importance_weight_is_that_norm(branch, dim, other):
    sn = _sn(dim, momentum=0.2)
    _saturate(sn, branch)
    options = {"momentum": 0.2} if other == "bn" else {}
    plain = build_norm(other, C, dim, **options).double()
    with torch.no_grad():
        plain.weight.copy_(sn.weight), plain.bias.copy_(sn.bias)
    for step in range(3):  # training steps, then eval (for BN: with the running statistics)
        _assert_same(sn.train(), plain.train(), sample(SHAPES[dim], 30 + step))
    if other == "bn":
        torch.testing.assert_close(sn.running_mean, plain.running_mean, **TOL)
        torch.testing.assert_close(sn.running_var, plain.running_var, **TOL)
    _assert_same(sn.eval(), plain.eval(), sample(SHAPES[dim], 40))


# ------------------------------------------------------------------------ simulated devices
@pytest.mark.parametrize("dim", [2, 1])
def test_simulated_devices_equal_one_layer_per_device(dim):
    check_per_device("sn", dim, True)


@pytest.mark.parametrize(
    "channels,dim,bn_average", [(3, 2, "moving_average"), (2, 1, "batch_average")]
)
def test_devices_when_channels_equal_branches(channels, dim, bn_average):
    """C == number of branches: PerDevice tiles the importance logits like a (C,) parameter; the
    layer reads their first copy, so it still equals one layer per device."""

    def build(c: int) -> torch.nn.Module:
        return build_norm("sn", c, dim, bn_average=bn_average)

    layer = randomize(PerDevice(build, channels, DEVICES).double())
    copies = [build(channels).double() for _ in range(DEVICES)]
    for copy_ in copies:
        copy_.load_state_dict({**dict(layer.named_parameters()), **layer.device_state(0)})
    shape = (channels, 3, 3) if dim == 2 else (channels,)
    for step in range(3):
        train_step(layer, copies, shape, seed=step)
    assert importance_weights(layer) == copies[0].importance()
    x = sample((7, *shape), 9)
    torch.testing.assert_close(layer.eval()(x), copies[0].eval()(x), **TOL)


def test_importance_weights_of_built_layers():
    assert importance_weights(build_norm("bn", C)) is None
    plain = _sn(2)
    assert importance_weights(plain) == plain.importance()
    for weights in plain.importance().values():
        assert len(weights) == 3 and sum(weights) == pytest.approx(1.0, abs=1e-12)
        assert all(isinstance(w, float) for w in weights)


# ------------------------------------------------------------------- population statistics
def test_precise_statistics_recompute_the_bn_branch():
    cfg = compose(["norm=sn", "data.image_size=12", "devices=2"])
    model, _ = build_model(cfg)
    model.double()
    data = [sample((2 * n, 1, 12, 12), seed) for seed, n in enumerate((5, 3))]
    inputs: dict[str, list[torch.Tensor]] = {}
    twin = copy.deepcopy(model).train()
    for name, module in twin.named_modules():
        if isinstance(module, PerDevice):
            inputs[name] = []
            module.register_forward_hook(lambda m, a, o, n=name: inputs[n].append(a[0]))
    with torch.no_grad():
        for x in data:
            twin(x)
    stats = precise_statistics(model, data)
    assert stats.layers == len(inputs) == 4  # 2 conv + 2 fc layers, all with running statistics
    for name, seen in inputs.items():
        for buffer, expected in _pooled(seen, 2).items():
            torch.testing.assert_close(stats.buffers[f"{name}.{buffer}"], expected, **TOL)


def _pooled(inputs: list[torch.Tensor], devices: int) -> dict[str, torch.Tensor]:
    """Per device (images d, d + devices, ...) the mean and unbiased variance of all values seen."""
    per_device = []
    for d in range(devices):
        values = torch.cat(
            [x[d::devices].transpose(0, 1).reshape(x.shape[1], -1) for x in inputs], 1
        )
        per_device.append((values.mean(1), values.var(1)))
    return {
        "running_mean": torch.cat([mean for mean, _ in per_device]),
        "running_var": torch.cat([var for _, var in per_device]),
    }


# -------------------------------------------------------------------- backbones and a run
@pytest.mark.parametrize(
    "backbone",
    [pytest.param(b, marks=pytest.mark.slow) if b == "resnet50" else b for b in sorted(BACKBONES)],
)
def test_every_backbone_trains_a_step_with_sn(backbone, one_thread):
    cfg = compose([f"backbone={backbone}", "norm=sn"])
    cfg.data.in_channels, cfg.data.image_size, cfg.data.num_classes = 3, 16, 10
    torch.manual_seed(0)
    model, choice = build_model(cfg)
    x = torch.randn(4, 3, 16, 16)
    F.cross_entropy(model(x), torch.arange(4)).backward()
    assert choice.built and all(isinstance(layer, SwitchableNorm) for layer in choice.built)
    for layer in choice.built:
        for logits in (layer.mean_weight, layer.var_weight):
            assert logits.grad is not None and torch.isfinite(logits.grad).all()
        assert layer.num_batches_tracked == 1
    assert any(layer.mean_weight.grad.abs().sum() > 0 for layer in choice.built)
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(x[:1])).all()


@pytest.mark.parametrize("extra", [[], ["norm.bn_average=batch_average", "eval.precise_batches=2"]])
def test_normbench_run_completes(normbench, extra):
    result = normbench("run", *TINY, "norm=sn", "epochs=1", *extra)
    assert result.code == 0, result.err
    record = result.record()
    assert record["status"] == "completed" and record["metrics"]["test_error"] is not None
    assert all("SwitchableNorm" in text for text in record["setup"]["norm_layers"].values())
