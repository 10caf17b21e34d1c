"""normbench.norms against independent references written here from the papers' formulas.

Every comparison runs in float64 with random (non-trivial) affine parameters, checks the forward
output and the gradients w.r.t. the input and every parameter (autograd through the reference).
Norms with their own activation (FRN+TLU, EvoNorm) are checked with it and in their act=False form.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from normbench.norms import NORMS, NormSpec, build_norm, norm_options, resolve_groups
from normbench.norms.reference import (
    ref_bn_eval,
    ref_bn_running,
    ref_bn_train,
    ref_evonorm_s0,
    ref_frn,
    ref_gn,
    ref_in,
    ref_ln,
    ref_mabn,
    ref_none,
)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "norm"
ALLOWED_PARAMS = {"weight", "bias", "tau", "eps_l", "v"}  # v: EvoNorm's
RUNNING_STATS = {
    "bn": {"running_mean", "running_var"},
    "syncbn": {"running_mean", "running_var"},
    "brn": {"running_mean", "running_var"},
    "gbn": {"running_mean", "running_var"},
    # norms whose eval uses running stats
    "evonorm_b0": {"running_var"},
    "mabn": {"running_var"},
    "sn": {"running_mean", "running_var"},  # its BN branch's
    "wn_mobn": {"running_mean"},  # mean-only BN
    "cbn": {"running_mean", "running_var"},  # of each batch, as BN's
}
N, C, H, W = 5, 6, 4, 3  # all different, so normalizing over a wrong axis shows
TOL = dict(rtol=1e-9, atol=1e-10)


# ------------------------------------------------------------------------------ helpers
def _input(dim: int, seed: int = 0, c: int = C, n: int = N) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (n, c, H, W) if dim == 2 else (n, c)
    # per-channel offsets and scales so that a wrong axis or a missing affine cannot pass
    offs = torch.randn(c, generator=g, dtype=torch.float64) * 3
    scale = torch.rand(c, generator=g, dtype=torch.float64) * 4 + 0.5
    view = (1, c) + (1,) * (len(shape) - 2)
    return torch.randn(shape, generator=g, dtype=torch.float64) * scale.view(view) + offs.view(view)


def _randomize(m: torch.nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name == "eps_l":  # keep eps_l small but signed, so |eps_l| matters
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 1e-2)
            else:
                p.copy_(
                    torch.randn(p.shape, generator=g, dtype=p.dtype)
                    + (1.0 if name == "weight" else 0.0)
                )


def _grads_match(module, ref, x, seed=2):
    """Forward output and d/dx, d/dparam of <out, g> match between module and reference."""
    # every norm keeps the input's shape; no extra forward here (it would move BN's running stats)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x1 = x.detach().clone().requires_grad_(True)
    out = module(x1)
    (out * g).sum().backward()

    x2 = x.detach().clone().requires_grad_(True)
    ps = {k: v.detach().clone().requires_grad_(True) for k, v in module.named_parameters()}
    out_ref = ref(x2, ps)
    (out_ref * g).sum().backward()

    torch.testing.assert_close(out, out_ref, **TOL)
    torch.testing.assert_close(x1.grad, x2.grad, **TOL)
    for k, v in module.named_parameters():
        torch.testing.assert_close(
            v.grad, ps[k].grad, **TOL, msg=lambda m, k=k: f"grad of {k}: {m}"
        )
    module.zero_grad(set_to_none=True)


def _build(name, dim=2, c=C, **opts):
    m = build_norm(name, c, dim, **opts).double()
    _randomize(m)
    return m


def _supported_dims(name):
    return (1, 2) if NORMS[name].supports_1d else (2,)


NAME_DIMS = [(n, d) for n in NORMS for d in _supported_dims(n)]
ACTIVATION_PARAMS = {"tau", "v"}  # FRN's TLU threshold, EvoNorm's v: what act=False drops


# ------------------------------------------------------------ registry / API contract
def test_registry_names_and_specs():
    assert set(NORMS) >= {"bn", "ln", "in", "gn", "frn", "none"}
    for name, spec in NORMS.items():
        assert isinstance(spec, NormSpec) and callable(spec.factory)
        assert spec.description and "\n" not in spec.description
    flags = {n: (s.batch_dependent, s.includes_activation, s.supports_1d) for n, s in NORMS.items()}
    assert flags["bn"] == (True, False, True)
    assert flags["ln"] == (False, False, True)
    assert flags["in"] == (False, False, False)
    assert flags["gn"] == (False, False, True)
    assert flags["frn"] == (False, True, True)
    assert flags["none"] == (False, False, True)


@pytest.mark.parametrize("act", [True, False])
@pytest.mark.parametrize("name,dim", NAME_DIMS)
def test_params_buffers_shapes_and_constant_input(name, dim, act):
    m = build_norm(name, C, dim, act=act)
    # SN's importance logits (one per branch, not per channel): tests/norms/test_switchable_norm.py
    params = {k: p for k, p in m.named_parameters() if k not in ("mean_weight", "var_weight")}
    assert set(params) <= ALLOWED_PARAMS
    # the activation's parameters exist exactly in the activated form of a norm with its own
    # activation
    assert bool(set(params) & ACTIVATION_PARAMS) == (act and NORMS[name].includes_activation)
    for k, p in params.items():
        assert p.shape == (C,), k
    # weight: 1, or the norm's scale_init (l2norm: SSD's 20)
    weight = norm_options(name).get("scale_init", 1.0)
    init = {"weight": weight, "bias": 0.0, "tau": 0.0, "eps_l": 1e-4, "v": 1.0}
    for k, p in params.items():
        assert torch.all(p == init[k]), k
    if name not in ("none", "wn", "wn_mobn"):  # WN: the scale is g, in the conv / linear layer
        assert {"weight", "bias"} <= set(params)
    buffers = {k for k, _ in m.named_buffers()}
    assert buffers & {"running_mean", "running_var"} == RUNNING_STATS.get(name, set())

    x = _input(dim).float()
    assert m(x).shape == x.shape
    const = torch.full(x.shape, 3.0)
    for mode in (m.train, m.eval):
        mode()
        assert torch.isfinite(m(const)).all()
        assert torch.isfinite(m(torch.zeros(x.shape))).all()


@pytest.mark.parametrize("name", list(NORMS))
def test_config_yaml_builds_factory(name):
    cfg = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / f"{name}.yaml"))
    assert cfg.pop("name") == name
    assert cfg == norm_options(name), (
        "config keys/defaults must equal the factory's keyword options"
    )
    for dim in _supported_dims(name):
        m = build_norm(name, 16, dim, **cfg)
        x = torch.randn(4, 16, 5, 5) if dim == 2 else torch.randn(4, 16)
        assert m(x).shape == x.shape


def test_factories_take_layer_arguments_positionally_and_options_by_keyword():
    """The convention norm_options relies on: a factory's positional-or-keyword parameters are the
    layer's (num_channels, dim, and act for a norm with its own activation); its keyword-only ones
    are the options."""
    for name, spec in NORMS.items():
        params = inspect.signature(spec.factory).parameters.values()
        layer = [p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
        assert layer == ["num_channels", "dim"] + (["act"] if spec.includes_activation else []), (
            name
        )
        assert all(
            p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
            for p in params
        ), name
        assert "act" not in norm_options(name)


@pytest.mark.parametrize("name,dim", NAME_DIMS)
def test_act_false(name, dim):
    """act=False: the activation-free form of a norm with its own activation (same class, without
    tau / v, `act=False` in its repr); for any other norm exactly the module act=True gives."""
    torch.manual_seed(0)
    a = build_norm(name, C, dim).double()
    torch.manual_seed(0)
    b = build_norm(name, C, dim, act=False).double()
    assert type(a) is type(b)
    keys_a, keys_b = set(a.state_dict()), set(b.state_dict())
    if NORMS[name].includes_activation:
        assert a.act is True and b.act is False
        assert keys_b == keys_a - ACTIVATION_PARAMS and keys_a & ACTIVATION_PARAMS
        assert "act=False" in repr(b) and "act=False" not in repr(a)
    else:
        assert keys_a == keys_b and repr(a) == repr(b)
        for mode in ("train", "eval"):
            getattr(a, mode)(), getattr(b, mode)()
            x = _input(dim, seed=11)
            assert torch.equal(a(x), b(x))
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert ka == kb and torch.equal(va, vb), ka


def test_act_must_be_a_bool():
    for name in ("frn", "bn"):
        for bad in ("false", 0, None):
            with pytest.raises(ValueError, match="act must be True or False"):
                build_norm(name, C, act=bad)


def test_unknown_name_option_dim_channels():
    with pytest.raises(ValueError, match=r"bn.*ln.*in.*gn.*frn.*none"):
        build_norm("batchnorm", 8)
    with pytest.raises((TypeError, ValueError), match=r"grups.*groups"):
        build_norm("gn", 8, grups=4)
    with pytest.raises((TypeError, ValueError), match="eps"):
        build_norm("none", 8, eps=1e-5)
    with pytest.raises((TypeError, ValueError), match="momentum"):
        build_norm("ln", 8, momentum=0.1)
    for name in NORMS:
        for dim in (0, 3, "2", True):
            with pytest.raises(ValueError, match="dim"):
                build_norm(name, 8, dim)
        for c in (0, -3):
            with pytest.raises(ValueError, match="num_channels"):
                build_norm(name, c)
    with pytest.raises(ValueError, match="eps"):
        build_norm("bn", 8, eps=0)
    with pytest.raises(ValueError, match="momentum"):
        build_norm("bn", 8, momentum=1.5)


def test_in_dim1_raises():
    with pytest.raises(ValueError, match="dim=1"):
        build_norm("in", 8, 1)


@pytest.mark.parametrize("name", ["ln", "gn", "frn"])
def test_custom_modules_reject_wrong_layout_and_have_repr(name):
    with pytest.raises(ValueError, match="dim=2"):
        build_norm(name, 8, 2)(torch.randn(4, 8))
    with pytest.raises(ValueError, match="dim=1"):
        build_norm(name, 8, 1)(torch.randn(4, 8, 3, 3))
    r = repr(build_norm(name, 8, 2))
    assert "8" in r and "eps=" in r


# ------------------------------------------------------------------- BN vs the formula
@pytest.mark.parametrize("dim", [1, 2])
def test_bn_train_eval_and_running_stats(dim):
    eps, momentum = 1e-5, 0.3
    m = _build("bn", dim, eps=eps, momentum=momentum)
    m.train()
    batches = [_input(dim, seed=s) for s in range(10, 14)]
    for b in batches[:-1]:
        m(b)
    _grads_match(m, lambda x, p: ref_bn_train(x, p, eps), batches[-1])  # 4th train step
    rm, rv = ref_bn_running(batches, momentum, C)
    torch.testing.assert_close(m.running_mean, rm, **TOL)
    torch.testing.assert_close(m.running_var, rv, **TOL)

    m.eval()
    x = _input(dim, seed=99)
    _grads_match(m, lambda x, p: ref_bn_eval(x, p, eps, rm, rv), x)
    torch.testing.assert_close(m.running_mean, rm, **TOL)  # eval leaves the stats alone


# ------------------------------------------------------- batch-independent norms vs formulas
def _ref_for(name, eps, **kw):
    return {
        "ln": lambda x, p: ref_ln(x, p, eps),
        "in": lambda x, p: ref_in(x, p, eps),
        "gn": lambda x, p: ref_gn(x, p, eps, kw.get("groups")),
        "frn": lambda x, p: ref_frn(x, p, eps, act=kw.get("act", True)),
        # the norm is GN; WS is on the convs
        "gn_ws": lambda x, p: ref_gn(x, p, eps, kw.get("groups")),
        "evonorm_s0": lambda x, p: ref_evonorm_s0(
            x, p, eps, kw.get("groups"), act=kw.get("act", True)
        ),
        "mabn": lambda x, p: ref_mabn(x, p, eps, kw["mode"]),
        "none": ref_none,
    }[name]


CASES = [
    ("ln", 2, {"eps": 1e-3}, {}),
    ("ln", 1, {"eps": 1e-3}, {}),
    ("in", 2, {"eps": 1e-3}, {}),
    ("gn", 2, {"eps": 1e-3}, {"groups": 3}),  # groups=32 -> 3 on C=6
    ("gn", 2, {"eps": 1e-3, "groups": 2}, {"groups": 2}),
    ("gn", 1, {"eps": 1e-3, "groups": 2}, {"groups": 2}),
    ("frn", 2, {"eps": 1e-3, "learned_eps": False}, {}),
    ("frn", 2, {"eps": 1e-3, "learned_eps": True}, {}),
    ("frn", 1, {"eps": 1e-3, "learned_eps": False}, {}),
    ("frn", 1, {"eps": 1e-3, "learned_eps": True}, {}),
    ("none", 2, {}, {}),
    ("none", 1, {}, {}),
    ("mabn", 2, {"eps": 1e-3}, {}),  # iterations 1 and 2: raw statistics, r = 1
    ("mabn", 1, {"eps": 1e-3}, {}),
    ("gn_ws", 2, {"eps": 1e-3}, {"groups": 3}),
    ("gn_ws", 1, {"eps": 1e-3, "groups": 2}, {"groups": 2}),
    ("evonorm_s0", 2, {"eps": 1e-3}, {"groups": 3}),  # groups=32 -> 3 on C=6
    ("evonorm_s0", 2, {"eps": 1e-3, "groups": 1, "min_channels_per_group": 1}, {"groups": 1}),
    ("evonorm_s0", 1, {"eps": 1e-3, "groups": 2}, {"groups": 2}),
    # act=False (build_norm's layer argument, passed along with the options here): no TLU / no
    # sigmoid
    ("frn", 2, {"eps": 1e-3, "learned_eps": False, "act": False}, {"act": False}),
    ("frn", 2, {"eps": 1e-3, "learned_eps": True, "act": False}, {"act": False}),
    ("frn", 1, {"eps": 1e-3, "learned_eps": False, "act": False}, {"act": False}),
    ("frn", 1, {"eps": 1e-3, "learned_eps": True, "act": False}, {"act": False}),
    ("evonorm_s0", 2, {"eps": 1e-3, "act": False}, {"groups": 3, "act": False}),
    (
        "evonorm_s0",
        2,
        {"eps": 1e-3, "groups": 1, "min_channels_per_group": 1, "act": False},
        {"groups": 1, "act": False},
    ),
    ("evonorm_s0", 1, {"eps": 1e-3, "groups": 2, "act": False}, {"groups": 2, "act": False}),
]
CASE_IDS = [
    f"{c[0]}-d{c[1]}-{i}" + ("-act_false" if c[2].get("act") is False else "")
    for i, c in enumerate(CASES)
]


@pytest.mark.parametrize("name,dim,opts,ref_kw", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_norm_matches_reference(name, dim, opts, ref_kw, mode):
    m = _build(name, dim, **opts)
    getattr(m, mode)()
    ref = _ref_for(name, opts.get("eps"), mode=mode, **ref_kw)
    _grads_match(m, ref, _input(dim, seed=3))
    _grads_match(m, ref, _input(dim, seed=4))  # no state carried between calls


def test_every_registered_norm_has_a_reference_case():
    # batch-statistics norms other than BN are checked against references in
    # test_sync_renorm_ghost_evonorm_ws.py, parametrized by BATCH_STAT_REFERENCE_DIMS
    # (imported here, not at the top: that module imports this one)
    from test_sync_renorm_ghost_evonorm_ws import (
        ACT_FALSE_REFERENCE_DIMS,
        BATCH_STAT_REFERENCE_DIMS,
    )

    # the norms that declare their formula reference (NormSpec.reference) are held to it on every
    # dim by `normbench check` (tests/test_check.py runs it)
    declared = {name for name, spec in NORMS.items() if spec.reference is not None}
    covered = {c[0] for c in CASES} | {"bn"} | set(BATCH_STAT_REFERENCE_DIMS) | declared
    assert covered == set(NORMS)
    for name in NORMS:
        for dim in _supported_dims(name):
            assert (
                name == "bn"
                or name in declared
                or dim in BATCH_STAT_REFERENCE_DIMS.get(name, ())
                or any(c[0] == name and c[1] == dim for c in CASES)
            )
    # and the act=False form of every norm with its own activation, on each of its dims
    linear = {(c[0], c[1]) for c in CASES if c[2].get("act") is False} | set(
        ACT_FALSE_REFERENCE_DIMS
    )
    assert linear >= {(n, d) for n, d in NAME_DIMS if NORMS[n].includes_activation}


# --------------------------------------------------------------------------- GN specifics
@pytest.mark.parametrize(
    "c,expected",
    [(6, 3), (16, 8), (120, 30), (84, 28), (64, 32), (256, 32), (1, 1), (2, 1), (3, 1), (7, 1)],
)
def test_resolve_groups_table(c, expected):
    assert resolve_groups(c, 32, 2, False) == expected
    m = build_norm("gn", c)
    assert m.num_groups == expected


def test_resolve_groups_rules_and_strict():
    assert resolve_groups(64, 32, 1, False) == 32
    assert resolve_groups(6, 32, 1, False) == 6
    assert resolve_groups(12, 5, 1, False) == 4
    assert resolve_groups(256, 32, 16, False) == 16
    assert resolve_groups(64, 32, 2, True) == 32
    with pytest.raises(ValueError, match=r"C=6.*1, 2, 3, 6"):
        resolve_groups(6, 32, 2, True)
    with pytest.raises(ValueError, match="C=84"):
        build_norm("gn", 84, strict=True)
    assert build_norm("gn", 96, strict="true").num_groups == 32
    assert build_norm("gn", 96, groups=8, strict=True).num_groups == 8


@pytest.mark.parametrize("dim", [1, 2])
def test_gn_one_group_equals_ln(dim):
    gn = _build("gn", dim, groups=1, min_channels_per_group=1)
    ln = _build("ln", dim)
    assert gn.num_groups == 1
    _same_module(gn, ln, _input(dim, seed=5))


def test_gn_c_groups_equals_in():
    gn = _build("gn", 2, groups=C, min_channels_per_group=1)
    inorm = _build("in", 2)
    assert gn.num_groups == C
    _same_module(gn, inorm, _input(2, seed=6))


def _same_module(a, b, x):
    b.load_state_dict(a.state_dict(), strict=False)
    _grads_match(a, lambda xx, p: torch.func.functional_call(b, p, (xx,)), x)


# -------------------------------------------------------------------------- FRN specifics
def test_frn_defaults_and_learned_eps_choice():
    m2, m1 = build_norm("frn", C, 2), build_norm("frn", C, 1)
    assert m2.eps == 1e-6 and m1.eps == 1e-6
    assert "eps_l" not in dict(m2.named_parameters())  # auto: fixed eps on conv layers
    assert dict(m1.named_parameters())["eps_l"].shape == (C,)  # auto: learned on fc layers
    for value, expected in [
        (True, True),
        ("true", True),
        ("TRUE", True),
        (False, False),
        ("false", False),
    ]:
        for dim in (1, 2):
            m = build_norm("frn", C, dim, learned_eps=value)
            assert ("eps_l" in dict(m.named_parameters())) is expected
    for bad in ("yes", 1, 0, None, "", 1.0):
        with pytest.raises(ValueError, match="learned_eps"):
            build_norm("frn", C, learned_eps=bad)


@pytest.mark.parametrize("dim", [1, 2])
def test_frn_learned_eps_value_is_used(dim):
    m = build_norm("frn", C, dim, learned_eps=True).double()
    x = _input(dim, seed=7) * 1e-2  # small x so eps matters
    with torch.no_grad():
        m.eps_l.copy_(torch.linspace(-0.5, 0.5, C, dtype=torch.float64))
    fixed = build_norm("frn", C, dim, learned_eps=False).double()
    assert not torch.allclose(m(x), fixed(x))
    _grads_match(m, lambda x, p: ref_frn(x, p, 1e-6), x)


def test_frn_fc_fixed_eps_is_nearly_sign_and_tlu_clamps():
    m = build_norm("frn", C, 1, learned_eps=False).double()
    x = _input(1, seed=8)
    x = x.sign() * (x.abs() + 0.1)  # |x| >= 0.1, so x / sqrt(x^2 + 1e-6) is within 1e-4 of sign(x)
    # tau=0: max(sign, 0)
    torch.testing.assert_close(m(x), torch.sign(x).clamp_min(0), atol=1e-3, rtol=0)
    with torch.no_grad():
        m.tau.fill_(0.25)
    assert (m(x) >= 0.25).all()
    # spatial form: explicit numbers, one (sample, channel) of a 2x2 map
    m2 = build_norm("frn", 1, 2, eps=1e-6, learned_eps=False).double()
    with torch.no_grad():
        m2.weight.fill_(2.0), m2.bias.fill_(-0.5), m2.tau.fill_(-1.0)
    x2 = torch.tensor([[[[1.0, -1.0], [3.0, -3.0]]]], dtype=torch.float64)  # mean x^2 = 5
    expected = torch.maximum(
        2.0 * x2 / math.sqrt(5 + 1e-6) - 0.5, torch.tensor(-1.0, dtype=torch.float64)
    )
    torch.testing.assert_close(m2(x2), expected, **TOL)


def test_frn_act_false_is_linear_and_can_be_negative():
    """Explicit numbers: without the TLU the output is gamma * x_hat + beta, values below any tau
    included; the activated form clamps at tau."""
    lin = build_norm("frn", 1, 2, eps=1e-6, learned_eps=False, act=False).double()
    with torch.no_grad():
        lin.weight.fill_(2.0), lin.bias.fill_(-0.5)
    x2 = torch.tensor([[[[1.0, -1.0], [3.0, -3.0]]]], dtype=torch.float64)  # mean x^2 = 5
    torch.testing.assert_close(lin(x2), 2.0 * x2 / math.sqrt(5 + 1e-6) - 0.5, **TOL)
    assert (lin(x2) < -1).any()
    act = build_norm("frn", 1, 2, eps=1e-6, learned_eps=False).double()
    with torch.no_grad():
        act.weight.fill_(2.0), act.bias.fill_(-0.5), act.tau.fill_(-1.0)
    assert (act(x2) >= -1).all()
