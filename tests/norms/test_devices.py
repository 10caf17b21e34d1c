"""PerDevice (simulated devices) against `devices` independent copies of the norm, one per device:
outputs, input and parameter gradients, every buffer, eval with device 0's or the mean running
statistics, the folded eval affine, and a state_dict round trip -- in float64."""

from __future__ import annotations

import copy

import pytest
import torch

from normbench.backbones import NormChoice
from normbench.fuse import eval_affine
from normbench.norms import NORMS, PerDevice, build_norm
from normbench.norms.reference_devices import (
    BATCH,
    CHANNELS,
    DEVICES,
    PHASES,
    cases,
    check_per_device,
    layers,
    train_step,
)


def test_phases_cover_every_per_device_norm():
    assert set(PHASES) == {name for name, spec in NORMS.items() if spec.per_device}
    assert not NORMS["syncbn"].per_device  # one set of statistics over all devices


@pytest.mark.parametrize("name,dim,act", cases())
def test_per_device_equals_one_layer_per_device(name, dim, act):
    check_per_device(name, dim, act)


def test_folded_eval_affine_is_device_0s():
    for name in PHASES:
        layer, copies = layers(name, 2, False)
        for step in range(3):
            train_step(layer, copies, (CHANNELS, 3, 3), seed=step)
        layer.eval()
        expected = eval_affine(copies[0].eval())
        if expected is None:
            assert eval_affine(layer) is None, name
            continue
        for mine, theirs in zip(eval_affine(layer), expected):
            torch.testing.assert_close(mine, theirs, msg=name)


def test_mean_running_stats_average_the_devices():
    layer, references = layers("bn", 2, True)
    layer.running_stats = "mean"
    for step in range(3):
        train_step(layer, references, (CHANNELS, 3, 3), seed=step)
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
    layer, references = layers(name, 2, True)
    for step in range(5):
        train_step(layer, references, (CHANNELS, 3, 3), seed=step)
    resumed, _ = layers(name, 2, True)
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
    layer, references = layers("bn", 2, True)
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


@pytest.mark.parametrize("name", ["bn", "mabn", "sn"])
def test_a_model_deep_copies_after_a_training_step(name):
    """copy.deepcopy (EMA/SWA copies, final evaluation) works after a step: the train copy must not
    keep the tiled parameters, which are not graph leaves; the copy continues as the original."""
    layer, references = layers(name, 2, True)
    train_step(layer, references, (CHANNELS, 3, 3), seed=0)
    twin = copy.deepcopy(layer)
    x = torch.randn(DEVICES * BATCH, CHANNELS, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(twin(x), layer(x), rtol=0, atol=0)
    layer.eval(), twin.eval()
    torch.testing.assert_close(twin(x), layer(x), rtol=0, atol=0)
