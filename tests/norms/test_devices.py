"""PerDevice (simulated devices) against `devices` independent copies of the norm, one per device:
outputs, input and parameter gradients, every buffer, eval with device 0's or the mean running
statistics, the folded eval affine, and a state_dict round trip -- in float64."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from normbench.backbones import NormChoice
from normbench.fuse import eval_affine
from normbench.norms import NORMS, PerDevice, build_norm

# options that take every norm through all its phases within a few steps (BRN's r/d clipping, GBN's
# several virtual batches per device, MABN's moving averages and clipped r)
PHASES = {
    "bn": {},
    "brn": {"warmup_start": 1, "rmax_iters": 3, "dmax_iters": 2},
    "gbn": {"ghost_batch": 2},
    "evonorm_b0": {},
    "mabn": {"buffer_size": 3, "warmup_iters": 2, "renorm_iters": 4},
}
DEVICES, BATCH, CHANNELS, STEPS = 3, 4, 5, 9


def test_phases_cover_every_per_device_norm():
    assert set(PHASES) == {name for name, spec in NORMS.items() if spec.per_device}
    assert not NORMS["syncbn"].per_device  # one set of statistics over all devices


def _layers(name: str, dim: int, act: bool) -> tuple[PerDevice, list[nn.Module]]:
    """The PerDevice layer and one independent C-channel copy per device, float64."""

    def build(channels: int) -> nn.Module:
        extra = {"act": act} if NORMS[name].includes_activation else {}
        return build_norm(name, channels, dim=dim, **extra, **PHASES[name])

    torch.manual_seed(0)
    per_device = PerDevice(build, CHANNELS, DEVICES).double()
    with torch.no_grad():  # parameters away from their constant init
        for parameter in per_device.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    references = [build(CHANNELS).double() for _ in range(DEVICES)]
    for reference in references:
        reference.load_state_dict(_as_one_device(per_device, 0), strict=True)
    return per_device, references


def _as_one_device(layer: PerDevice, device: int) -> dict[str, torch.Tensor]:
    return {**dict(layer.named_parameters()), **layer.device_state(device)}


def _train_step(layer: PerDevice, references: list[nn.Module], shape: tuple[int, ...]) -> None:
    """One step on random data; per device: same output, and the input gradient of one device's
    loss; the parameter gradient is the mean over devices, as DDP's."""
    x = torch.randn(DEVICES * BATCH, *shape, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(DEVICES * BATCH, *shape, dtype=torch.float64)
    out = layer(x)
    (out * weights).sum().div(DEVICES).backward()  # the mean of the devices' losses
    grads = [torch.zeros_like(p) for p in layer.parameters()]
    for d, reference in enumerate(references):
        chunk = slice(d, None, DEVICES)  # device d's images: d, d + DEVICES, ...
        x_d = x.detach()[chunk].clone().requires_grad_(True)
        out_d = reference(x_d)
        (out_d * weights[chunk]).sum().backward()
        torch.testing.assert_close(out[chunk], out_d, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(x.grad[chunk] * DEVICES, x_d.grad, rtol=1e-9, atol=1e-10)
        for total, parameter in zip(grads, reference.parameters()):
            total += parameter.grad / DEVICES
    with torch.no_grad():  # SGD, then every device holds the new parameters (DDP)
        for parameter, grad in zip(layer.parameters(), grads):
            torch.testing.assert_close(parameter.grad, grad, rtol=1e-9, atol=1e-10)
            parameter.sub_(0.1 * parameter.grad)
            parameter.grad = None
        for reference in references:
            for mine, theirs in zip(layer.parameters(), reference.parameters()):
                theirs.copy_(mine)
                theirs.grad = None


def _assert_buffers(layer: PerDevice, references: list[nn.Module]) -> None:
    for d, reference in enumerate(references):
        state = layer.device_state(d)
        buffers = {name for name, _ in reference.named_buffers()}
        for name, buffer in reference.state_dict().items():
            if name not in buffers:
                continue
            torch.testing.assert_close(state[name], buffer, rtol=1e-9, atol=1e-12, msg=name)


def _cases() -> list[tuple[str, int, bool]]:
    cases = []
    for name, spec in NORMS.items():
        if not spec.per_device:
            continue
        for dim in (2, 1) if spec.supports_1d else (2,):
            for act in (True, False) if spec.includes_activation else (True,):
                cases.append((name, dim, act))
    return cases


@pytest.mark.parametrize("name,dim,act", _cases())
def test_per_device_equals_one_layer_per_device(name, dim, act):
    layer, references = _layers(name, dim, act)
    shape = (CHANNELS, 3, 3) if dim == 2 else (CHANNELS,)
    for _ in range(STEPS):
        _train_step(layer, references, shape)
        _assert_buffers(layer, references)
    x = torch.randn(7, *shape, dtype=torch.float64)
    layer.eval()
    references[0].eval()
    torch.testing.assert_close(layer(x), references[0](x), rtol=1e-10, atol=1e-10)
    expected = eval_affine(references[0])
    if expected is None:
        assert eval_affine(layer) is None
    else:
        for mine, theirs in zip(eval_affine(layer), expected):
            torch.testing.assert_close(mine, theirs)


def test_mean_running_stats_average_the_devices():
    layer, references = _layers("bn", 2, True)
    layer.running_stats = "mean"
    for _ in range(3):
        _train_step(layer, references, (CHANNELS, 3, 3))
    averaged = copy.deepcopy(references[0]).eval()
    for name in ("running_mean", "running_var"):
        getattr(averaged, name).copy_(torch.stack([getattr(r, name) for r in references]).mean(0))
    x = torch.randn(6, CHANNELS, 3, 3, dtype=torch.float64)
    layer.eval()
    torch.testing.assert_close(layer(x), averaged(x), rtol=1e-10, atol=1e-10)
    # and device 0's are not the mean (the test would not tell them apart otherwise)
    references[0].eval()
    assert not torch.allclose(averaged(x), references[0](x))


@pytest.mark.parametrize("name", ["mabn", "brn"])
def test_state_dict_round_trip_continues_exactly(name):
    """A layer loaded from a state_dict (a resumed run) continues as the original: MABN's host-side
    step counters come back with its buffers."""
    layer, references = _layers(name, 2, True)
    for _ in range(5):
        _train_step(layer, references, (CHANNELS, 3, 3))
    resumed, _ = _layers(name, 2, True)
    resumed.load_state_dict(layer.state_dict())
    assert resumed.state_dict().keys() == layer.state_dict().keys()
    x = torch.randn(DEVICES * BATCH, CHANNELS, 3, 3, dtype=torch.float64)
    for _ in range(4):
        torch.testing.assert_close(resumed(x), layer(x), rtol=0, atol=0)
    for key, value in layer.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_state_lives_in_the_per_device_layer():
    layer = PerDevice(lambda c: build_norm("bn", c), CHANNELS, DEVICES)
    assert list(layer.children()) == []  # a leaf: fx folding and state_dict see one module
    assert set(layer.state_dict()) == {
        "weight",
        "bias",
        "running_mean",
        "running_var",
        "num_batches_tracked",
    }
    assert layer.weight.shape == (CHANNELS,)
    assert layer.running_mean.shape == (DEVICES * CHANNELS,)
    assert "3 simulated devices" in repr(layer)


def test_channels_last_input_and_indivisible_batch():
    layer, references = _layers("bn", 2, True)
    x = torch.randn(DEVICES * BATCH, CHANNELS, 4, 4, dtype=torch.float64)
    out = layer(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out[::DEVICES], references[0](x[::DEVICES]))
    with pytest.raises(ValueError, match="divisible by 3"):
        layer(x[:-1])


def test_norm_choice_wraps_only_per_device_norms():
    for name, spec in NORMS.items():
        choice = NormChoice(name, devices=4)
        module = choice(8)
        assert isinstance(module, PerDevice) == spec.per_device, name
        assert choice.built == [module]
    assert not isinstance(NormChoice("bn", devices=1)(8), PerDevice)
