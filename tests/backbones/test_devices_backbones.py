"""Every backbone with every norm on 3 simulated devices (devices=3): it builds, the per-device
norms are PerDevice layers with per-device buffers, and a training step and an eval forward work."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from normbench.backbones import BACKBONES, build_model
from normbench.config import compose
from normbench.norms import NORMS, PerDevice

DEVICES, BATCH, SIZE = 3, 2, 16


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is as fast, and robust on a busy machine
    yield
    torch.set_num_threads(threads)


def _cases() -> list:
    """Every (backbone, norm); on ResNet-50 (2-3 s a step here) only the norms devices changes: the
    others build the same model as with devices=1, which tests/backbones/test_resnet_shufflenet.py
    trains."""
    return [
        (backbone, norm)
        for backbone in BACKBONES
        for norm in sorted(NORMS)
        if backbone != "resnet50" or NORMS[norm].batch_dependent
    ]


@pytest.mark.parametrize("backbone,norm", _cases())
def test_every_backbone_with_every_norm_trains_a_step_on_3_devices(backbone, norm):
    cfg = compose([f"backbone={backbone}", f"norm={norm}", f"devices={DEVICES}"])
    cfg.data.in_channels, cfg.data.image_size, cfg.data.num_classes = 3, SIZE, 10
    torch.manual_seed(0)
    model, choice = build_model(cfg)
    per_device = [m for m in choice.built if isinstance(m, PerDevice)]
    assert len(per_device) == (len(choice.built) if NORMS[norm].per_device else 0)
    x = torch.randn(DEVICES * BATCH, 3, SIZE, SIZE, requires_grad=True)
    out = model(x)
    assert out.shape == (DEVICES * BATCH, 10) and torch.isfinite(out).all()
    F.cross_entropy(out, torch.arange(DEVICES * BATCH) % 10).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for layer in per_device:
        # mean-only BN (wn_mobn) has neither a scale nor a running_var: its bias and running_mean
        param = layer.weight if hasattr(layer, "weight") else layer.bias
        assert param.grad is not None and torch.isfinite(param.grad).all()
        stats = getattr(layer, "running_var", getattr(layer, "running_mean", None))
        stats = stats.view(DEVICES, -1)
        assert not torch.equal(stats[0], stats[1]), "each device updates its own statistics"
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(x[:5])).all()  # eval takes any batch size
