"""Properties `normbench check` holds every registered norm to, whatever its formula, so that a
plugin without a formula reference is checked too: deterministic train and eval forwards, a
state_dict round trip, scale invariance (where NormSpec.scale_invariant claims it), batch
(in)dependence as NormSpec.batch_dependent declares, and finite gradients.

Every property is checked on each form of the layer (dim=2, dim=1 where it has an fc form; act=True
and act=False for a norm with its own activation) built with its default options, as a run builds
it from configs/norm/<name>.yaml (NormSpec.check_options are for the reference check only), float64
on the CPU. Also the tensor helpers selfcheck shares (sample, randomize, outputs_and_grads).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

import torch
from torch import nn

from .norms import NORMS, build_norm

BATCH, CHANNELS = 5, 6
# N(a*x) vs N(x) at a large input scale, where a norm's eps is negligible
SCALES, BASE_SCALE, SCALE_TOL = (0.5, 8.0), 100.0, {"rtol": 1e-4, "atol": 1e-4}


def sample(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """float64 input with per-channel offsets and scales, so a wrong axis or a missing affine
    shows."""
    generator = torch.Generator().manual_seed(seed)
    channels = shape[1]
    view = (1, channels) + (1,) * (len(shape) - 2)
    offset = torch.randn(channels, generator=generator, dtype=torch.float64).view(view) * 3
    scale = (torch.rand(channels, generator=generator, dtype=torch.float64) * 4 + 0.5).view(view)
    return torch.randn(shape, generator=generator, dtype=torch.float64) * scale + offset


def randomize(module: nn.Module, seed: int = 1) -> nn.Module:
    """Non-trivial parameter values (weights around 1, the rest around 0; FRN's eps_l small)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=param.dtype)
            param.copy_(
                noise * 1e-2 if name == "eps_l" else noise + (1.0 if name == "weight" else 0.0)
            )
    return module


def outputs_and_grads(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    params: list[torch.Tensor],
    seed: int = 2,
) -> list[torch.Tensor]:
    """[fn(x), d<fn(x), g>/dx, d<fn(x), g>/dparams...] for a fixed random g."""
    x = x.detach().clone().requires_grad_(True)
    out = fn(x)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    grads = torch.autograd.grad((out * g).sum(), [x, *params], allow_unused=True)
    return [
        out.detach(),
        *[torch.zeros_like(p) if gr is None else gr for p, gr in zip([x, *params], grads)],
    ]


def forms(name: str) -> list[tuple[int, bool]]:
    """(dim, act) of every form of the layer: dim=1 where it has an fc form, act=False where it
    carries its own activation."""
    spec = NORMS[name]
    dims = (2, 1) if spec.supports_1d else (2,)
    acts = (True, False) if spec.includes_activation else (True,)
    return [(dim, act) for dim in dims for act in acts]


def describe(done: list[tuple[int, bool]]) -> str:
    """ "dim=2, dim=1 act=False": the forms a check went through."""
    return ", ".join(f"dim={dim}" + ("" if act else " act=False") for dim, act in done)


def layer(name: str, dim: int, act: bool, seed: int | None = 1) -> nn.Module:
    """A float64 layer with default options in train mode; parameters randomized unless seed is
    None (then as initialized)."""
    extra = {"act": act} if NORMS[name].includes_activation else {}
    module = build_norm(name, CHANNELS, dim, **extra).double().train()
    return module if seed is None else randomize(module, seed)


def shape_of(dim: int) -> tuple[int, ...]:
    return (BATCH, CHANNELS, 4, 3) if dim == 2 else (BATCH, CHANNELS)


def forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return module(x)


def check_deterministic(name: str) -> str:
    """Train and eval forwards run, keep the input's shape and give the same output twice: two
    copies of a fresh layer on one batch, then eval twice after that step."""
    for dim, act in forms(name):
        module = layer(name, dim, act)
        twin = copy.deepcopy(module)
        x, x_eval = sample(shape_of(dim), 3), sample(shape_of(dim), 4)
        out = forward(module, x)
        assert out.shape == x.shape, f"dim={dim}: output shape {tuple(out.shape)} != input's"
        assert torch.equal(out, forward(twin, x)), f"dim={dim}: train outputs differ"
        module.eval()
        first = forward(module, x_eval)
        assert torch.equal(first, forward(module, x_eval)), f"dim={dim}: eval outputs differ"
    return f"train and eval: same output twice ({describe(forms(name))})"


def check_state_dict_round_trip(name: str) -> str:
    """A fresh layer loaded with a trained layer's state_dict gives its outputs, in eval and in the
    next training step: all state that matters is in the state_dict."""
    for dim, act in forms(name):
        trained = layer(name, dim, act, seed=1)
        forward(trained, sample(shape_of(dim), 3))
        loaded = layer(name, dim, act, seed=7)
        loaded.load_state_dict(trained.state_dict())
        for mode in ("eval", "train"):
            x = sample(shape_of(dim), 5)
            getattr(trained, mode)(), getattr(loaded, mode)()
            assert torch.equal(forward(trained, x), forward(loaded, x)), (
                f"dim={dim}: {mode} outputs differ after load_state_dict"
            )
    return f"eval and next train step equal after load_state_dict ({describe(forms(name))})"


def check_scale_invariant(name: str) -> str:
    """N(a*x) == N(x) for a > 0 on a fresh layer's first training step, without the layer's own
    activation (EvoNorm-S0's x*sigmoid(v*x) is not scale invariant; its normalization is)."""
    own_activation = NORMS[name].includes_activation
    done = [(dim, act) for dim, act in forms(name) if not (act and own_activation)]
    for dim, act in done:
        fresh = layer(name, dim, act, seed=None)
        x = sample(shape_of(dim), 3) * BASE_SCALE
        want = forward(copy.deepcopy(fresh), x)
        for scale in SCALES:
            gap = (forward(copy.deepcopy(fresh), x * scale) - want).abs().max().item()
            tolerance = SCALE_TOL["atol"] + SCALE_TOL["rtol"] * want.abs().max().item()
            assert gap <= tolerance, (
                f"dim={dim}: N({scale}*x) differs from N(x) by up to {gap:.3g}; a layer that "
                "does not normalize declares scale_invariant=False"
            )
    return f"a in {SCALES}, first training step of a fresh layer ({describe(done)})"


def check_batch_dependence(name: str) -> str:
    """Sample 0's output with the other samples of the batch replaced: in training unchanged for a
    norm declaring batch_dependent=False, changed for one declaring True; in eval (after one
    training step) unchanged for every norm."""
    dependent = NORMS[name].batch_dependent
    for dim, act in forms(name):
        module = layer(name, dim, act)
        x = sample(shape_of(dim), 3)
        others = torch.cat([x[:1], sample(shape_of(dim), 6)[1:]])
        train_out = forward(copy.deepcopy(module), x)[0]
        train_others = forward(copy.deepcopy(module), others)[0]
        changed = not torch.allclose(train_out, train_others, rtol=1e-9, atol=1e-10)
        if changed and not dependent:
            raise AssertionError(
                f"dim={dim}: declared batch_dependent=False, but in training sample 0's output "
                "changes with the other samples of the batch: declare batch_dependent=True"
            )
        if dependent and not changed:
            raise AssertionError(
                f"dim={dim}: declared batch_dependent=True, but in training sample 0's output "
                "does not change with the other samples: declare batch_dependent=False"
            )
        forward(module, x)
        module.eval()
        eval_out, eval_others = forward(module, x)[0], forward(module, others)[0]
        torch.testing.assert_close(
            eval_out,
            eval_others,
            rtol=1e-9,
            atol=1e-10,
            msg=f"dim={dim}: in eval, sample 0's output changes with the other samples",
        )
    train = "depends on" if dependent else "ignores"
    return (
        f"training output {train} the other samples, eval output ignores them (batch_dependent="
        f"{dependent}; {describe(forms(name))})"
    )


def check_gradients_finite(name: str) -> str:
    """Output and gradients (input and every parameter) finite in training and eval, for a random
    and an all-zero input (a dead position after ReLU)."""
    for dim, act in forms(name):
        module = layer(name, dim, act)
        params: list[torch.Tensor] = list(module.parameters())
        for mode in ("train", "eval"):
            getattr(module, mode)()
            for kind, x in (
                ("random", sample(shape_of(dim), 3)),
                ("zero", 0 * sample(shape_of(dim), 3)),
            ):
                tensors = outputs_and_grads(module, x, params)
                names = ["output", "d/dx", *[f"d/d{n}" for n, _ in module.named_parameters()]]
                for tensor_name, tensor in zip(names, tensors):
                    assert torch.isfinite(tensor).all(), (
                        f"dim={dim}, {mode}, {kind} input: {tensor_name} is not finite"
                    )
    return (
        f"output and all gradients, train and eval, random and zero input ({describe(forms(name))})"
    )


def property_checks(name: str) -> list[tuple[str, Callable[[], str]]]:
    """(check name, run) of every property norm `name` is held to, for `normbench check`."""
    spec = NORMS[name]
    checks = [
        (f"{name} train and eval forwards are deterministic", check_deterministic),
        (f"{name} state_dict round trip", check_state_dict_round_trip),
    ]
    if spec.scale_invariant:
        checks.append((f"{name} is scale invariant (N(a*x) == N(x))", check_scale_invariant))
    dependence = "batch-dependent" if spec.batch_dependent else "batch-independent"
    checks += [
        (f"{name} is {dependence} as declared", check_batch_dependence),
        (f"{name} gradients are finite", check_gradients_finite),
    ]
    return [(title, functools.partial(run, name)) for title, run in checks]
