"""`normbench check`: every check passes on the shipped layers, and a broken layer makes it fail
(exit 1)."""

from __future__ import annotations

import torch

from normbench.norms import NORMS, devices, frn
from normbench.selfcheck import all_checks


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
    assert result.out.splitlines()[0].startswith("FAIL  frn == its reference formula")
    assert result.out.strip().endswith("0 passed, 1 failed")


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
