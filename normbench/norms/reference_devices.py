"""The reference for simulated devices: independent copies of a norm, one per device, as on that
many GPUs under DDP. `normbench check` and the tests hold PerDevice against it in float64."""

from __future__ import annotations

import torch
from torch import nn

from . import NORMS, PerDevice, build_norm

# options that take every per-device norm through all its phases within STEPS steps: BRN's r/d
# clipping, GBN's several virtual batches per device, MABN's moving averages and clipped r
PHASES = {
    "bn": {},
    "brn": {"warmup_start": 1, "rmax_iters": 3, "dmax_iters": 2},
    "gbn": {"ghost_batch": 2},
    "evonorm_b0": {},
    "mabn": {"buffer_size": 3, "warmup_iters": 2, "renorm_iters": 4},
    "cbn": {},  # unbound here: BN phase only; tests/norms/test_cbn.py checks it bound
    "sn": {},
    "wn_mobn": {},
}
DEVICES, BATCH, CHANNELS, STEPS = 3, 4, 5, 9
TOL = {"rtol": 1e-9, "atol": 1e-10}


def layers(name: str, dim: int, act: bool) -> tuple[PerDevice, list[nn.Module]]:
    """A PerDevice layer of norm `name` on DEVICES devices, and one independent CHANNELS-channel
    copy per device with the same state, float64; parameters moved off their constant init."""

    def build(channels: int) -> nn.Module:
        extra = {"act": act} if NORMS[name].includes_activation else {}
        # a norm without a phase entry (a plugin) runs with the options its check declares
        options = PHASES.get(name, NORMS[name].check_options)
        return build_norm(name, channels, dim=dim, **extra, **options)

    generator = torch.Generator().manual_seed(0)
    per_device = PerDevice(build, CHANNELS, DEVICES).double()
    with torch.no_grad():
        for parameter in per_device.parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
            parameter.add_(0.3 * noise)
    copies = [build(CHANNELS).double() for _ in range(DEVICES)]
    for copy in copies:
        copy.load_state_dict({**dict(per_device.named_parameters()), **per_device.device_state(0)})
    return per_device, copies


def train_step(
    layer: PerDevice, copies: list[nn.Module], shape: tuple[int, ...], seed: int
) -> None:
    """One SGD step on random data, checked: per device the same output, the input gradient of
    that device's loss (the one-process loss is their mean), the parameter gradient of DDP (the mean
    over devices), then every buffer. Raises AssertionError on a difference."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(DEVICES * BATCH, *shape, generator=generator, dtype=torch.float64)
    weights = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    x.requires_grad_(True)
    out = layer(x)
    (out * weights).sum().div(DEVICES).backward()
    mean_grads = [torch.zeros_like(p) for p in layer.parameters()]
    for d, copy in enumerate(copies):
        mine = slice(d, None, DEVICES)  # device d's images: d, d + DEVICES, ...
        x_d = x.detach()[mine].clone().requires_grad_(True)
        out_d = copy(x_d)
        (out_d * weights[mine]).sum().backward()
        torch.testing.assert_close(out[mine], out_d, **TOL, msg=lambda m: f"output: {m}")
        torch.testing.assert_close(x.grad[mine] * DEVICES, x_d.grad, **TOL, msg="d/dx")
        for total, parameter in zip(mean_grads, copy.parameters()):
            total += parameter.grad / DEVICES
    with torch.no_grad():  # SGD; then every device holds the new parameters, as under DDP
        for parameter, mean_grad in zip(layer.parameters(), mean_grads):
            torch.testing.assert_close(parameter.grad, mean_grad, **TOL, msg="d/dparameter")
            parameter.sub_(0.1 * parameter.grad)
            parameter.grad = None
        for copy in copies:
            for mine, theirs in zip(layer.parameters(), copy.parameters()):
                theirs.copy_(mine)
                theirs.grad = None
    assert_same_buffers(layer, copies)


def assert_same_buffers(layer: PerDevice, copies: list[nn.Module]) -> None:
    """Device d's saved buffers (PerDevice.device_state) equal copy d's."""
    for d, copy in enumerate(copies):
        state = layer.device_state(d)
        for name, buffer in copy.named_buffers():
            if name in state:
                torch.testing.assert_close(state[name], buffer, **TOL, msg=f"device {d} {name}")


def check_per_device(name: str, dim: int, act: bool) -> None:
    """STEPS training steps and an eval forward (device 0's statistics), all checked."""
    layer, copies = layers(name, dim, act)
    shape = (CHANNELS, 3, 3) if dim == 2 else (CHANNELS,)
    for step in range(STEPS):
        train_step(layer, copies, shape, seed=step)
    x = torch.randn(7, *shape, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
    layer.eval()
    copies[0].eval()
    torch.testing.assert_close(layer(x), copies[0](x), **TOL, msg="eval output")


def cases() -> list[tuple[str, int, bool]]:
    """(norm, dim, act) for every per-device norm in every form it has."""
    found = []
    for name, spec in NORMS.items():
        if not spec.per_device:
            continue
        for dim in (2, 1) if spec.supports_1d else (2,):
            for act in (True, False) if spec.includes_activation else (True,):
                found.append((name, dim, act))
    return found
