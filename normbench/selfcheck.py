"""`normbench check`: numerical self-checks of the norm layers, one pass/fail line each (float64,
CPU)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .backbones import build_model
from .config import compose
from .fuse import eval_affine, fold_norms
from .norm_properties import describe, forms, outputs_and_grads, property_checks, randomize, sample
from .norms import NORMS, build_norm
from .norms import reference as ref
from .norms.ghost_batch_norm import ghost_sizes
from .norms.reference_devices import DEVICES, STEPS, cases, check_per_device
from .norms.scratch_bn import scratch_batch_norm

TOL = {"rtol": 1e-9, "atol": 1e-10}


@dataclass(frozen=True)
class Check:
    name: str
    norms: tuple[str, ...]  # the norms it is about, for `normbench check --norm NAME`
    # returns a short detail; raises AssertionError (or any error) on failure
    run: Callable[[], str]


def assert_same_module(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    """Two modules with parameters of the same shapes (copied from a to b) agree on output and all
    grads."""
    with torch.no_grad():
        for pa, pb in zip(a.parameters(), b.parameters()):
            pb.copy_(pa)
    got = outputs_and_grads(a, x, list(a.parameters()))
    want = outputs_and_grads(b, x, list(b.parameters()))
    for i, (g, w) in enumerate(zip(got, want)):
        torch.testing.assert_close(
            g, w, **TOL, msg=lambda m, i=i: f"tensor {i} (0=output, 1=dx, 2..=dparams): {m}"
        )


def assert_matches_reference(module: nn.Module, reference: Callable, x: torch.Tensor) -> None:
    """module(x) and reference(x, params) agree on the output and the gradients w.r.t. x and every
    parameter."""
    params = dict(module.named_parameters())
    copies = {name: p.detach().clone().requires_grad_(True) for name, p in params.items()}
    got = outputs_and_grads(module, x, list(params.values()))
    want = outputs_and_grads(lambda t: reference(t, copies), x, list(copies.values()))
    names = ["output", "d/dx", *[f"d/d{name}" for name in params]]
    for name, g, w in zip(names, got, want):
        torch.testing.assert_close(g, w, **TOL, msg=lambda m, name=name: f"{name}: {m}")


# Options that make a check exercise the interesting path on a 5-image batch: BRN with its bounds
# already relaxed (r_max=3, d_max=5 from step 0), GBN with two virtual batches (3 + 2 images); a
# norm's NormSpec.check_options take their place.
CHECK_OPTIONS = {
    "brn": {"warmup_start": 0, "rmax_iters": 0, "dmax_iters": 0},
    "gbn": {"ghost_batch": 2},
}
# the norms whose formulas this module's own table holds (_train_reference, _eval_reference); any
# other norm has a reference check where its NormSpec.reference is set
TABLE_REFERENCES = (
    "bn",
    "syncbn",
    "brn",
    "gbn",
    "mabn",
    "evonorm_b0",
    "ln",
    "in",
    "gn",
    "gn_ws",
    "frn",
    "evonorm_s0",
    "none",
)


def has_reference(name: str) -> bool:
    return NORMS[name].reference is not None or name in TABLE_REFERENCES


def _references(name: str, module: nn.Module, act: bool, x: torch.Tensor) -> tuple:
    """(train formula, eval formula maker): the NormSpec's reference where set, else this module's
    table; the eval formula is made after the training step (it reads the running statistics)."""
    reference = NORMS[name].reference
    if reference is not None:
        return reference(module, True, act), lambda: reference(module, False, act)
    return _train_reference(name, module, act, x), lambda: _eval_reference(name, module, act)


def _train_reference(name: str, module: nn.Module, act: bool, x: torch.Tensor) -> Callable:
    """The formula for the first training step of a fresh layer."""
    eps = getattr(module, "eps", None)
    if name in ("bn", "syncbn"):
        return lambda t, p: ref.ref_bn_train(t, p, eps)
    if name == "brn":
        c = x.shape[1]
        zeros, ones = torch.zeros(c, dtype=x.dtype), torch.ones(c, dtype=x.dtype)
        return lambda t, p: ref.ref_brn_train(t, p, eps, zeros, ones, module.r_max, module.d_max)
    if name == "gbn":
        return lambda t, p: ref.ref_gbn_train(
            t, p, eps, ghost_sizes(x.shape[0], module.ghost_batch)
        )
    if name == "mabn":
        return lambda t, p: ref.ref_mabn(t, p, eps, "train")
    if name == "evonorm_b0":
        return lambda t, p: ref.ref_evonorm_b0(t, p, eps, None, act)
    return _stateless_reference(name, module, act)


def _eval_reference(name: str, module: nn.Module, act: bool) -> Callable:
    """The formula in eval mode, with the layer's running statistics after its training step."""
    eps = getattr(module, "eps", None)
    if name in ("bn", "syncbn", "brn", "gbn"):
        return lambda t, p: ref.ref_bn_eval(t, p, eps, module.running_mean, module.running_var)
    if name == "mabn":
        return lambda t, p: ref._affine(
            t / torch.sqrt(ref._bcast(module.running_var, t) + eps), p, t
        )
    if name == "evonorm_b0":
        return lambda t, p: ref.ref_evonorm_b0(t, p, eps, module.running_var.detach().clone(), act)
    return _stateless_reference(name, module, act)


def _stateless_reference(name: str, module: nn.Module, act: bool) -> Callable:
    eps = getattr(module, "eps", None)
    return {
        "ln": lambda t, p: ref.ref_ln(t, p, eps),
        "in": lambda t, p: ref.ref_in(t, p, eps),
        "gn": lambda t, p: ref.ref_gn(t, p, eps, module.num_groups),
        "gn_ws": lambda t, p: ref.ref_gn(t, p, eps, module.num_groups),
        "frn": lambda t, p: ref.ref_frn(t, p, eps, act),
        "evonorm_s0": lambda t, p: ref.ref_evonorm_s0(t, p, eps, module.num_groups, act),
        "none": ref.ref_none,
    }[name]


def _check_reference(name: str) -> Callable[[], str]:
    """The layer (with its check options) against its formula: the first training step of a fresh
    layer, then eval."""

    def run() -> str:
        spec = NORMS[name]
        built = spec.check_options or CHECK_OPTIONS.get(name, {})
        for dim, act in forms(name):
            shape = (5, 6, 4, 3) if dim == 2 else (5, 6)
            module = randomize(build_norm(name, 6, dim, act=act, **built).double())
            x = sample(shape, seed=3)
            module.train()
            train_reference, eval_reference = _references(name, module, act, x)
            assert_matches_reference(module, train_reference, x)
            module.eval()
            assert_matches_reference(module, eval_reference(), sample(shape, seed=4))
        return f"train + eval, output + all gradients ({describe(forms(name))})"

    return run


def _check_gn_equals(groups_of: Callable[[int], int], other: str) -> str:
    for dim, shape in ((2, (5, 6, 4, 3)), (1, (5, 6))):
        if dim == 1 and not NORMS[other].supports_1d:
            continue
        for mode in ("train", "eval"):
            gn = randomize(
                build_norm("gn", 6, dim, groups=groups_of(6), min_channels_per_group=1).double()
            )
            ref = build_norm(other, 6, dim).double()
            getattr(gn, mode)(), getattr(ref, mode)()
            assert_same_module(gn, ref, sample(shape, seed=3))
    return "outputs and gradients equal in train and eval mode"


def _check_gn_channels_per_group() -> str:
    """GN with 3 channels per group on 6 channels is the formula with 2 groups (the default
    groups=32 would give 3)."""
    for dim, shape in ((2, (5, 6, 4, 3)), (1, (5, 6))):
        gn = build_norm("gn", 6, dim, groups=None, channels_per_group=3).double()
        randomize(gn)
        for mode, seed in (("train", 3), ("eval", 4)):
            getattr(gn, mode)()
            assert_matches_reference(
                gn, lambda t, p, eps=gn.eps: ref.ref_gn(t, p, eps, 2), sample(shape, seed)
            )
    return "train + eval, output + all gradients (dim=2, dim=1)"


def _check_scratch_bn() -> str:
    """d2l's from-scratch batch_norm == nn.BatchNorm2d over 5 train steps (outputs, grads, running
    stats), then eval."""
    torch_bn = randomize(nn.BatchNorm2d(6, eps=1e-5, momentum=0.1).double())
    gamma = torch_bn.weight.detach().clone().view(1, 6, 1, 1).requires_grad_(True)
    beta = torch_bn.bias.detach().clone().view(1, 6, 1, 1).requires_grad_(True)
    mean, var = (
        torch.zeros(1, 6, 1, 1, dtype=torch.float64),
        torch.ones(1, 6, 1, 1, dtype=torch.float64),
    )
    biased_var = var.clone()
    for step in range(5):
        x = sample((4, 6, 5, 5), seed=10 + step)
        ours = outputs_and_grads(
            lambda t, mean=mean, var=var: scratch_batch_norm(
                t, gamma, beta, mean, var, 1e-5, 0.1, True
            )[0],
            x,
            [gamma, beta],
        )
        torch_out = outputs_and_grads(torch_bn, x, [torch_bn.weight, torch_bn.bias])
        torch.testing.assert_close(ours[0], torch_out[0], **TOL)
        torch.testing.assert_close(ours[1], torch_out[1], **TOL)
        torch.testing.assert_close(ours[2].flatten(), torch_out[2], **TOL)
        _, mean, var = scratch_batch_norm(x, gamma, beta, mean, var, 1e-5, 0.1, True)
        _, _, biased_var = scratch_batch_norm(
            x, gamma, beta, mean, biased_var, 1e-5, 0.1, True, unbiased_moving_var=False
        )
        torch.testing.assert_close(mean.flatten(), torch_bn.running_mean, **TOL)
        torch.testing.assert_close(var.flatten(), torch_bn.running_var, **TOL)
    torch_bn.eval()
    x = sample((4, 6, 5, 5), seed=20)
    with torch.no_grad():
        torch.testing.assert_close(
            scratch_batch_norm(x, gamma, beta, mean, var, 1e-5, 0.1, False)[0], torch_bn(x), **TOL
        )
    gap = (var / biased_var).max().item()
    return (
        "5 train steps + eval equal incl. running stats (the book's biased running var is up "
        f"to {gap:.4f}x smaller)"
    )


def _check_folding(norm: str) -> Callable[[], str]:
    def run() -> str:
        torch.manual_seed(0)
        model, _ = build_model(compose([f"norm={norm}"]))
        model.double().train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        # move running statistics and affine parameters off their initial values
        for step in range(3):
            loss = model(sample((8, 1, 28, 28), seed=30 + step)).logsumexp(dim=1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        folded, count = fold_norms(model)
        x = sample((8, 1, 28, 28), seed=40)
        with torch.no_grad():
            torch.testing.assert_close(folded(x), model(x), rtol=1e-9, atol=1e-9)
        assert count > 0, "no norm was folded"
        return f"LeNet-{norm}: {count} norms folded, eval outputs equal"

    return run


def _check_devices(name: str) -> Callable[[], str]:
    def run() -> str:
        forms = [(dim, act) for norm, dim, act in cases() if norm == name]
        for dim, act in forms:
            check_per_device(name, dim, act)
        done = ", ".join(f"dim={dim}" + ("" if act else " act=False") for dim, act in forms)
        return f"outputs, all gradients and every buffer over {STEPS} steps, then eval ({done})"

    return run


def all_checks() -> list[Check]:
    checks = [
        Check(
            f"{name} == its reference formula"
            + (
                " (warm-up: custom backward == autograd of y = gamma*x/sqrt(E[x^2]+eps)+beta)"
                if name == "mabn"
                else ""
            ),
            (name,),
            _check_reference(name),
        )
        for name in NORMS
        if has_reference(name)
    ]
    checks += [Check(title, (name,), run) for name in NORMS for title, run in property_checks(name)]
    checks += [
        Check(
            "gn channels_per_group=3 == its reference formula with C/3 groups",
            ("gn",),
            _check_gn_channels_per_group,
        ),
        Check("gn(groups=1) == ln", ("gn", "ln"), lambda: _check_gn_equals(lambda c: 1, "ln")),
        Check("gn(groups=C) == in", ("gn", "in"), lambda: _check_gn_equals(lambda c: c, "in")),
        Check("d2l from-scratch batch_norm == nn.BatchNorm2d", ("bn",), _check_scratch_bn),
    ]
    checks += [
        Check(
            f"{name} on {DEVICES} simulated devices == one layer per device",
            (name,),
            _check_devices(name),
        )
        for name in dict.fromkeys(name for name, _, _ in cases())
    ]
    for name in NORMS:
        probe = build_norm(name, 4).double().eval()
        if eval_affine(probe) is not None:
            checks.append(
                Check(f"{name} folds into the preceding conv/linear", (name,), _check_folding(name))
            )
    return checks


def run_checks(norm: str | None = None) -> list[tuple[Check, bool, str]]:
    results = []
    for check in all_checks():
        if norm is not None and norm not in check.norms:
            continue
        try:
            detail = check.run()
            results.append((check, True, detail))
        except Exception as error:  # a failed check is reported as a line, never a traceback
            first = (
                str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            )
            results.append((check, False, f"{type(error).__name__}: {first}"))
    return results
