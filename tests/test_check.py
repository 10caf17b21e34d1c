"""`normbench check`: every check passes on the shipped layers, and a broken layer makes it fail
(exit 1)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from normbench.norms import NORMS, NormSpec, devices, frn
from normbench.selfcheck import all_checks, run_checks


def test_every_norm_has_a_reference_check_and_all_pass(normbench):
    names = [check.name for check in all_checks()]
    for norm, spec in NORMS.items():
        assert any(name.startswith(f"{norm} == its reference formula") for name in names), norm
        on_devices = f"{norm} on 3 simulated devices == one layer per device"
        assert (on_devices in names) == spec.per_device, norm
    result = normbench("check")
    assert result.code == 0, result.out
    lines = result.out.strip().splitlines()
    assert (
        all(line.startswith("PASS") for line in lines[:-1])
        and lines[-1] == f"{len(names)} passed, 0 failed"
    )


def test_a_broken_layer_fails_its_check(normbench, monkeypatch):
    real_forward = frn.FilterResponseNorm.forward

    def forward_without_tlu_threshold(self, x):  # TLU clamping at 0 instead of the learned tau
        out = real_forward(self, x)
        return torch.maximum(out, torch.zeros_like(out)) if self.tau is not None else out

    monkeypatch.setattr(frn.FilterResponseNorm, "forward", forward_without_tlu_threshold)
    result = normbench("check", "--norm", "frn")
    assert result.code == 1
    failed = [line for line in result.out.splitlines() if line.startswith("FAIL")]
    assert len(failed) == 1 and failed[0].startswith("FAIL  frn == its reference formula")
    assert result.out.strip().endswith(" passed, 1 failed")


def test_a_per_device_layer_sharing_one_buffer_fails_its_check(normbench, monkeypatch):
    """PerDevice evaluating the devices' mean instead of device 0's is caught."""
    monkeypatch.setattr(devices.PerDevice, "_one_device", _mean_of_devices)
    result = normbench("check", "--norm", "bn")
    assert result.code == 1
    assert "FAIL  bn on 3 simulated devices == one layer per device" in result.out


def _mean_of_devices(self, buffer):
    if not self._per_device(buffer):
        return buffer
    return buffer.unflatten(-1, (self.devices, self.num_channels)).mean(-2)


def test_check_filters_by_norm_and_rejects_unknown(normbench):
    result = normbench("check", "--norm", "gn")
    assert result.code == 0
    assert {line.split()[1] for line in result.out.splitlines()[:-1]} == {
        "gn",
        "gn(groups=1)",
        "gn(groups=C)",
    }
    bad = normbench("check", "--norm", "gm")
    assert bad.code == 2 and "did you mean 'gn'" in bad.err


# ------------------------------------------------- properties checked for any norm (plugins too)
PROPERTIES = (
    "train and eval forwards are deterministic",
    "state_dict round trip",
    "is scale invariant (N(a*x) == N(x))",
    "gradients are finite",
)


class PerSampleNorm(nn.Module):
    """A plugin's norm without a formula reference: each sample over (C, H, W) (as LN), affine.
    The subclasses below each break one property."""

    def __init__(self, num_channels: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def axes(self, x):
        return tuple(range(1, x.dim()))

    def normalize(self, x):
        mean = x.mean(self.axes(x), keepdim=True)
        var = ((x - mean) ** 2).mean(self.axes(x), keepdim=True)
        return (x - mean) / torch.sqrt(var + 1e-5)

    def forward(self, x):
        view = (1, -1) + (1,) * (x.dim() - 2)
        return self.normalize(x) * self.weight.view(view) + self.bias.view(view)


class Noisy(PerSampleNorm):
    def forward(self, x):
        return super().forward(x) + 1e-3 * torch.randn_like(x)


class HiddenState(PerSampleNorm):
    """Remembers the last training batch's mean in a plain attribute, not a buffer: eval uses
    state a state_dict does not carry."""

    seen = 0.0

    def forward(self, x):
        if self.training:
            self.seen = x.detach().mean().item()
            return super().forward(x)
        return super().forward(x) + self.seen


class CentersOnly(PerSampleNorm):
    def normalize(self, x):
        return x - x.mean(self.axes(x), keepdim=True)


class BatchStatistics(PerSampleNorm):
    """BN's formula without running statistics: uses the batch, in training and in eval."""

    def axes(self, x):
        return (0,) + tuple(range(2, x.dim()))


class WithoutEps(PerSampleNorm):
    def normalize(self, x):
        return x / torch.sqrt((x**2).sum(dim=1, keepdim=True))


def _register(monkeypatch, module_class, batch_dependent: bool) -> None:
    """Registers `module_class` as norm "fake" for this test only (monkeypatch removes it)."""

    def factory(num_channels, dim=2):
        return module_class(num_channels, dim)

    spec = NormSpec(factory, "a test's plugin", batch_dependent, False, True)
    monkeypatch.setitem(NORMS, "fake", spec)


def test_a_plugin_without_reference_gets_every_property_checked(normbench, monkeypatch):
    _register(monkeypatch, PerSampleNorm, batch_dependent=False)
    result = normbench("check", "--norm", "fake")
    assert result.code == 0, result.out
    names = [line.split(":")[0] for line in result.out.splitlines()[:-1]]
    assert names == [f"PASS  fake {p}" for p in PROPERTIES[:3]] + [
        "PASS  fake is batch-independent as declared",
        "PASS  fake gradients are finite",
    ]


@pytest.mark.parametrize(
    "module_class,batch_dependent,failing",
    [
        (Noisy, False, "train and eval forwards are deterministic"),
        (HiddenState, False, "state_dict round trip"),
        (CentersOnly, False, "is scale invariant (N(a*x) == N(x))"),
        (BatchStatistics, False, "is batch-independent as declared"),  # lies: uses the batch
        (PerSampleNorm, True, "is batch-dependent as declared"),  # lies: ignores the batch
        (WithoutEps, False, "gradients are finite"),
    ],
)
def test_a_norm_breaking_a_property_fails_that_check(
    normbench, monkeypatch, module_class, batch_dependent, failing
):
    _register(monkeypatch, module_class, batch_dependent)
    result = normbench("check", "--norm", "fake")
    assert result.code == 1
    assert f"FAIL  fake {failing}: " in result.out, result.out
    if module_class is BatchStatistics:
        assert "declared batch_dependent=False" in result.out
        assert "declare batch_dependent=True" in result.out


def test_l2norm_and_gn_channels_per_group_checks_pass():
    results = run_checks("l2norm") + run_checks("gn")
    names = {check.name: (passed, detail) for check, passed, detail in results}
    wanted = [
        "l2norm == its reference formula",
        *[f"l2norm {p}" for p in PROPERTIES],
        "l2norm is batch-independent as declared",
        "gn channels_per_group=3 == its reference formula with C/3 groups",
    ]
    for name in wanted:
        assert names[name][0], (name, names[name][1])
    assert all(passed for passed, _ in names.values()), names
