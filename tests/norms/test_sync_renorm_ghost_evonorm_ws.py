"""SyncBN, Batch Renorm, Ghost BN, EvoNorm-B0/S0 and GN+WS against references written here from the
papers.

As in test_norms.py: float64, random affine parameters, forward output and gradients w.r.t. the
input and every parameter; plus the state these layers carry (running statistics, BRN's step
counter), their state_dict round trip, and that a training step needs no host-device
synchronisation. EvoNorm-B0 also in its act=False form (x / batch std, affine), which folds into the
preceding conv at eval.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from test_norms import (
    TOL,
    C,
    H,
    W,
    _build,
    _grads_match,
    _input,
    _randomize,
    ref_bn_eval,
    ref_bn_running,
    ref_bn_train,
)
from torch import nn

from normbench.backbones import build_model
from normbench.config import compose
from normbench.fuse import eval_affine, fold_norms
from normbench.norms import NORMS, build_norm, norm_options, sync_world_size
from normbench.norms.conv_weight import StandardizedConv2d
from normbench.norms.ghost_batch_norm import ghost_sizes
from normbench.norms.reference import (
    _axes,
    _bcast,
    _biased_var,
    ref_brn_limits,
    ref_brn_train,
    ref_evonorm_b0,
    ref_evonorm_b0_running,
    ref_gbn_train,
)

# The batch-statistics norms checked against references in this file, and on which dims; the tests
# below are parametrized from it and test_norms.py's coverage test reads it.
BATCH_STAT_REFERENCE_DIMS = {"syncbn": (1, 2), "brn": (1, 2), "gbn": (1, 2), "evonorm_b0": (2,)}
# act=False forms checked against references here (the others are in test_norms.py's CASES)
ACT_FALSE_REFERENCE_DIMS = {("evonorm_b0", 2)}
NEW_NORMS = ["syncbn", "brn", "gbn", "evonorm_b0", "evonorm_s0", "gn_ws"]
STATS = ("running_mean", "running_var")


def _cases(name):
    return [(name, d) for d in BATCH_STAT_REFERENCE_DIMS[name]]


# ------------------------------------------------------------------------------ registry
def test_flags_descriptions_and_conv_weight():
    flags = {
        n: (NORMS[n].batch_dependent, NORMS[n].includes_activation, NORMS[n].supports_1d)
        for n in NEW_NORMS
    }
    assert flags == {
        "syncbn": (True, False, True),
        "brn": (True, False, True),
        "gbn": (True, False, True),
        "evonorm_b0": (True, True, False),
        "evonorm_s0": (False, True, True),
        "gn_ws": (False, False, True),
    }
    papers = {
        "syncbn": "Peng",
        "brn": "Ioffe",
        "gbn": "Hoffer",
        "evonorm_b0": "Liu",
        "evonorm_s0": "Liu",
        "gn_ws": "Qiao",
    }
    for name, author in papers.items():
        assert author in NORMS[name].description
    assert NORMS["gn_ws"].conv_weight == "standardize"
    assert all(NORMS[n].conv_weight is None for n in NEW_NORMS if n != "gn_ws")
    assert list(NORMS)[:6] == ["bn", "ln", "in", "gn", "frn", "none"]  # existing order kept


def test_option_validation():
    bad = [
        ("syncbn", {"momentum": 1.5}),
        ("syncbn", {"momentum": "0.1"}),
        ("brn", {"momentum": None}),
        ("brn", {"r_max": 0.5}),
        ("brn", {"d_max": -1.0}),
        ("brn", {"r_max": float("inf")}),
        ("brn", {"warmup_start": -1}),
        ("brn", {"warmup_start": 10, "rmax_iters": 5}),
        ("brn", {"warmup_start": 10, "dmax_iters": 5}),
        ("brn", {"rmax_iters": 2.5}),
        ("gbn", {"ghost_batch": 1}),
        ("gbn", {"ghost_batch": 8.0}),
        ("gbn", {"eps": 0}),
        ("evonorm_b0", {"momentum": -0.1}),
        ("evonorm_s0", {"groups": 0}),
        ("evonorm_s0", {"min_channels_per_group": 0}),
        ("gn_ws", {"groups": 5, "strict": True}),
    ]
    for name, opts in bad:
        with pytest.raises(ValueError, match="|".join(opts)):
            build_norm(name, C, **opts)
    # cumulative average, as bn allows
    assert build_norm("syncbn", C, momentum=None).momentum is None
    with pytest.raises(ValueError, match="dim=1"):
        build_norm("evonorm_b0", C, 1)


@pytest.mark.parametrize(
    "name,dim",
    [
        ("syncbn", 2),
        ("syncbn", 1),
        ("brn", 2),
        ("brn", 1),
        ("gbn", 2),
        ("gbn", 1),
        ("evonorm_b0", 2),
        ("evonorm_s0", 2),
        ("evonorm_s0", 1),
    ],
)
def test_modules_reject_wrong_layout_and_have_repr(name, dim):
    m = build_norm(name, 8, dim)
    wrong = torch.randn(4, 8) if dim == 2 else torch.randn(4, 8, 3, 3)
    with pytest.raises(ValueError, match=f"dim={dim}"):
        m(wrong)
    with pytest.raises(ValueError, match="expects input"):
        m(torch.randn(4, 7, 3, 3) if dim == 2 else torch.randn(4, 7))
    assert "8" in repr(m) and "eps=" in repr(m)


# ---------------------------------------------------------------------------------- SyncBN
def _bn_twin(m, dim, **kw):
    bn = (nn.BatchNorm2d if dim == 2 else nn.BatchNorm1d)(C, **kw).double()
    bn.load_state_dict(m.state_dict())
    return bn


@pytest.mark.parametrize("momentum", [0.3, None])
@pytest.mark.parametrize("name,dim", _cases("syncbn"))
def test_syncbn_is_batchnorm_in_one_process(name, dim, momentum):
    m = _build(name, dim, eps=1e-3, momentum=momentum)
    bn = _bn_twin(m, dim, eps=1e-3, momentum=momentum)
    for step, seed in enumerate(range(20, 24)):
        if step == 2:
            m.eval(), bn.eval()
        x = _input(dim, seed=seed)
        _grads_match(m, lambda xx, p: torch.func.functional_call(bn, p, (xx,)), x)
        for k, v in bn.state_dict().items():
            assert torch.equal(m.state_dict()[k], v), k
    assert m.num_batches_tracked == 2 and sync_world_size(m) == 1 and m.world_size == 1
    assert "world_size=1: not synchronised" in repr(m)


@pytest.mark.parametrize("name,dim", _cases("syncbn"))
def test_syncbn_against_the_bn_formula(name, dim):
    eps, momentum = 1e-3, 0.3
    m = _build(name, dim, eps=eps, momentum=momentum)
    batches = [_input(dim, seed=s) for s in range(30, 33)]
    for b in batches[:-1]:
        m(b)
    _grads_match(m, lambda x, p: ref_bn_train(x, p, eps), batches[-1])
    rm, rv = ref_bn_running(batches, momentum, C)
    torch.testing.assert_close((m.running_mean, m.running_var), (rm, rv), **TOL)
    m.eval()
    _grads_match(m, lambda x, p: ref_bn_eval(x, p, eps, rm, rv), _input(dim, seed=34))


def test_syncbn_in_a_process_group_of_one_on_cpu(tmp_path):
    """torch's nn.SyncBatchNorm raises on CPU tensors whenever a process group exists, even of one
    process; ours is BN there, and sync_world_size reads the group."""
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        with pytest.raises(ValueError, match="GPU"):
            nn.SyncBatchNorm(C)(torch.randn(4, C, 2, 2))
        m = _build("syncbn", 2)
        bn = _bn_twin(m, 2)
        x = _input(2, seed=40)
        _grads_match(m, lambda xx, p: torch.func.functional_call(bn, p, (xx,)), x)
        torch.testing.assert_close(m.running_var, bn.running_var, **TOL)
        assert sync_world_size(m) == 1
    finally:
        dist.destroy_process_group()


def test_sync_world_size_reads_the_process_group(monkeypatch):
    model, _ = build_model(compose(["norm=syncbn"]))
    assert sync_world_size(model) == 1
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 4)
    assert sync_world_size(model) == 4
    assert "synchronised over 4 processes" in repr(model.norm1)
    with pytest.raises(ValueError, match="no SyncBatchNorm"):
        sync_world_size(build_norm("bn", C))


# ------------------------------------------------------------------------------ Batch Renorm
def test_brn_schedule_at_given_steps():
    m = build_norm("brn", C, r_max=3.0, d_max=5.0, warmup_start=10, rmax_iters=30, dmax_iters=20)
    for t in (0, 9, 10, 11, 15, 20, 25, 30, 31, 1000):
        m.num_batches_tracked.fill_(t)
        rmax, dmax = m.limits()
        torch.testing.assert_close(
            (rmax.item(), dmax.item()), ref_brn_limits(t, 3.0, 5.0, 10, 30, 20)
        )
    m.num_batches_tracked.fill_(15)
    assert m.limits()[0].item() == pytest.approx(1.5) and m.limits()[1].item() == pytest.approx(2.5)
    step = build_norm("brn", C, warmup_start=5, rmax_iters=5, dmax_iters=5)  # no ramp: a step at 5
    for t, expected in [(4, (1.0, 0.0)), (5, (3.0, 5.0)), (6, (3.0, 5.0))]:
        step.num_batches_tracked.fill_(t)
        assert tuple(v.item() for v in step.limits()) == expected
    defaults = build_norm("brn", C)
    assert (
        defaults.r_max,
        defaults.d_max,
        defaults.warmup_start,
        defaults.dmax_iters,
        defaults.rmax_iters,
    ) == (3.0, 5.0, 500, 2500, 4000)


@pytest.mark.parametrize("name,dim", _cases("brn"))
def test_brn_train_steps_schedule_clipping_and_eval(name, dim):
    eps, momentum = 1e-3, 0.3
    sched = dict(r_max=3.0, d_max=5.0, warmup_start=1, rmax_iters=5, dmax_iters=3)
    m = _build(name, dim, eps=eps, momentum=momentum, **sched)
    batches = [_input(dim, seed=s) for s in range(50, 57)]
    clipped = {"r": [], "d": []}
    for t, x in enumerate(batches):
        rm, rv = (
            ref_bn_running(batches[:t], momentum, C)
            if t
            else (torch.zeros(C, dtype=torch.float64), torch.ones(C, dtype=torch.float64))
        )
        rmax, dmax = ref_brn_limits(t, 3.0, 5.0, 1, 5, 3)
        _grads_match(m, lambda xx, p: ref_brn_train(xx, p, eps, rm, rv, rmax, dmax), x)
        if t >= 2:  # relaxed bounds: record which channels the clip binds on
            axes = _axes(x)
            sigma = torch.sqrt(rv + eps)
            r = torch.sqrt(_biased_var(x, axes) + eps).view(-1) / sigma
            d = (x.mean(dim=axes) - rm) / sigma
            clipped["r"] += ((r > rmax) | (r < 1 / rmax)).tolist()
            clipped["d"] += (d.abs() > dmax).tolist()
    # the clip binds on some channels and not on others, so both branches were checked above
    for key in ("r", "d"):
        assert any(clipped[key]) and not all(clipped[key]), key
    assert m.num_batches_tracked == len(batches)
    rm, rv = ref_bn_running(batches, momentum, C)  # running stats: BN's (unbiased variance)
    torch.testing.assert_close((m.running_mean, m.running_var), (rm, rv), **TOL)
    m.eval()
    _grads_match(m, lambda xx, p: ref_bn_eval(xx, p, eps, rm, rv), _input(dim, seed=60))
    assert m.num_batches_tracked == len(batches)  # eval does not count


@pytest.mark.parametrize("name,dim", _cases("brn"))
def test_brn_without_correction_is_batchnorm(name, dim):
    m = _build(
        name,
        dim,
        eps=1e-3,
        momentum=0.5,
        r_max=1.0,
        d_max=0.0,
        warmup_start=0,
        rmax_iters=0,
        dmax_iters=0,
    )
    bn = _bn_twin(m, dim, eps=1e-3, momentum=0.5)
    # momentum 0.5: running stats far from the batch's, so r, d would matter
    for seed in range(70, 74):
        _grads_match(
            m, lambda xx, p: torch.func.functional_call(bn, p, (xx,)), _input(dim, seed=seed)
        )
    torch.testing.assert_close(
        (m.running_mean, m.running_var), (bn.running_mean, bn.running_var), **TOL
    )


def test_brn_rejects_a_single_value_per_channel():
    m = build_norm("brn", C, 1)
    with pytest.raises(ValueError, match="more than 1 value"):
        m(torch.randn(1, C))


# --------------------------------------------------------------------------------- Ghost BN
@pytest.mark.parametrize(
    "batch,ghost,sizes",
    [
        (24, 8, [8, 8, 8]),
        (20, 8, [10, 10]),
        (21, 8, [11, 10]),
        (23, 8, [12, 11]),
        (7, 8, [7]),
        (15, 8, [15]),
        (5, 2, [3, 2]),
    ],
)
def test_gbn_virtual_batch_sizes(batch, ghost, sizes):
    assert ghost_sizes(batch, ghost) == sizes


@pytest.mark.parametrize(
    "batch,ghost,sizes", [(24, 8, [8, 8, 8]), (21, 8, [11, 10]), (5, 2, [3, 2])]
)
@pytest.mark.parametrize("name,dim", _cases("gbn"))
def test_gbn_is_batchnorm_per_virtual_batch(name, dim, batch, ghost, sizes):
    eps, momentum = 1e-3, 0.3
    m = _build(name, dim, ghost_batch=ghost, eps=eps, momentum=momentum)
    batches = [_input(dim, seed=s, n=batch) for s in range(80, 83)]
    for x in batches:
        _grads_match(m, lambda xx, p: ref_gbn_train(xx, p, eps, sizes), x)
    # running stats: BN's update once per virtual batch, in order
    rm, rv = ref_bn_running([chunk for x in batches for chunk in x.split(sizes)], momentum, C)
    torch.testing.assert_close((m.running_mean, m.running_var), (rm, rv), **TOL)
    assert m.num_batches_tracked == len(batches) * len(sizes)
    m.eval()
    _grads_match(m, lambda xx, p: ref_bn_eval(xx, p, eps, rm, rv), _input(dim, seed=84, n=batch))


def test_gbn_small_batch_is_batchnorm_and_single_values_raise():
    m = _build("gbn", 2, eps=1e-3)  # ghost_batch 16 > 5 images: one virtual batch
    _grads_match(m, lambda xx, p: ref_bn_train(xx, p, 1e-3), _input(2, seed=85))
    with pytest.raises(ValueError, match="more than 1 value"):
        build_norm("gbn", C, 1)(torch.randn(1, C))


# ------------------------------------------------------------------------------- EvoNorm-B0
@pytest.mark.parametrize("act", [True, False])
@pytest.mark.parametrize("name,dim", _cases("evonorm_b0"))
def test_evonorm_b0_train_running_var_and_eval(name, dim, act):
    eps, momentum = 1e-3, 0.3
    m = _build(name, dim, eps=eps, momentum=momentum, act=act)
    batches = [_input(dim, seed=s) for s in range(90, 94)]
    for x in batches:
        _grads_match(m, lambda xx, p: ref_evonorm_b0(xx, p, eps, act=act), x)
    # the same running variance with and without act
    rv = ref_evonorm_b0_running(batches, momentum, C)
    torch.testing.assert_close(m.running_var, rv, **TOL)
    m.eval()
    x = _input(dim, seed=95)
    _grads_match(m, lambda xx, p: ref_evonorm_b0(xx, p, eps, running_var=rv, act=act), x)
    # no state
    _grads_match(m, lambda xx, p: ref_evonorm_b0(xx, p, eps, running_var=rv, act=act), x * 0.1)
    torch.testing.assert_close(m.running_var, rv, **TOL)
    if not act:
        return
    # both sides of the max are taken on this data, so both were checked
    p = dict(m.named_parameters())
    left = torch.sqrt(_bcast(rv, x) + eps)
    right = _bcast(p["v"], x) * x + torch.sqrt(_biased_var(x, (2, 3)) + eps)
    assert (left > right).any() and (left < right).any()


# -------------------------------------------------------------------- EvoNorm-S0 and GN + WS
@pytest.mark.parametrize("c,expected", [(6, 3), (16, 8), (120, 30), (84, 28), (3, 1)])
def test_evonorm_s0_and_gn_ws_groups(c, expected):
    for name in ("evonorm_s0", "gn_ws"):
        assert build_norm(name, c).num_groups == expected
    assert "requested 32" in repr(build_norm("evonorm_s0", 6))


# ------------------------------------------------------------------------ state and host sync
ROUND_TRIP_OPTS = {
    "brn": dict(warmup_start=1, rmax_iters=6, dmax_iters=4),
    "gbn": dict(ghost_batch=2),
    "syncbn": {},
    "evonorm_b0": {},
    "evonorm_s0": {},
    "gn_ws": {},
    "evonorm_b0-act_false": dict(act=False),
    "evonorm_s0-act_false": dict(act=False),
}


@pytest.mark.parametrize("case", NEW_NORMS + ["evonorm_b0-act_false", "evonorm_s0-act_false"])
def test_state_dict_round_trip_continues_identically(case):
    name = case.split("-")[0]
    opts = dict(
        ROUND_TRIP_OPTS[case], **({"momentum": 0.3} if "momentum" in norm_options(name) else {})
    )
    a = _build(name, 2, **opts)
    for seed in range(100, 103):
        a(_input(2, seed=seed))
    b = build_norm(name, C, 2, **opts).double()
    _randomize(b, seed=7)  # different parameters until loaded
    b.load_state_dict(a.state_dict())
    for seed in range(103, 107):  # BRN: the bounds are still ramping, so the step counter matters
        x = _input(2, seed=seed)
        assert torch.equal(a(x), b(x))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    a.eval(), b.eval()
    x = _input(2, seed=107)
    assert torch.equal(a(x), b(x))


NO_SYNC_CASES = [
    (n, d, True) for n in BATCH_STAT_REFERENCE_DIMS for d in BATCH_STAT_REFERENCE_DIMS[n]
]
NO_SYNC_CASES += [(n, d, False) for n, d, _ in NO_SYNC_CASES if NORMS[n].includes_activation]


@pytest.mark.parametrize("name,dim,act", NO_SYNC_CASES)
def test_train_step_needs_no_host_sync(name, dim, act, monkeypatch):
    opts = {"warmup_start": 0, "rmax_iters": 2, "dmax_iters": 1} if name == "brn" else {}
    opts["act"] = act  # build_norm's layer argument, passed along with the options
    shape = (8, C, H, W) if dim == 2 else (8, C)
    # 1) meta tensors have no data: .item(), bool(), float() or a data-dependent branch anywhere
    #    (Python or C++) raises
    meta = build_norm(name, C, dim, **opts).to("meta").train()
    x = torch.empty(shape, device="meta", requires_grad=True)
    meta(x).sum().backward()
    with pytest.raises(RuntimeError):
        torch.zeros((), device="meta").item()  # the premise of this check
    # 2) on the CPU, with every Python-level way to read a tensor's value made to raise
    m = build_norm(name, C, dim, **opts).train()
    x = torch.randn(shape, requires_grad=True)

    def no_sync(*args, **kwargs):
        raise AssertionError("host sync in a training step")

    for attr in ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy", "cpu"):
        monkeypatch.setattr(torch.Tensor, attr, no_sync)
    for _ in range(3):
        m(x).sum().backward()
    monkeypatch.undo()
    assert torch.isfinite(x.grad).all()


# ----------------------------------------------------------------------------------- LeNet
@pytest.mark.parametrize("name", NEW_NORMS)
def test_lenet_builds_with_each_new_norm(name):
    model, choice = build_model(compose([f"norm={name}"]))
    types = [type(m).__name__ for m in model]
    x = torch.randn(4, 1, 28, 28)
    model(x).sum().backward()
    model.eval()
    assert model(x).shape == (4, 10)
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    assert (
        all(isinstance(m, StandardizedConv2d) for m in convs) == (name == "gn_ws")
        and len(convs) == 2
    )
    norm_types = {type(m).__name__ for m in choice.built}
    assert len(norm_types) == 1
    norm_type = norm_types.pop()
    if NORMS[name].includes_activation:  # the norm is the activation: nothing follows it
        after = [types[i + 1] for i, t in enumerate(types) if t == norm_type]
        assert after and "Sigmoid" not in after and "ReLU" not in after
    # B0 has no 1-D form: fc layers get Identity + Sigmoid
    expected = {"evonorm_b0": 2}.get(name, 4)
    assert types.count(norm_type) == expected
    if name == "evonorm_b0":
        assert (
            types.count("Identity") == 2
            and types.count("Sigmoid") == 2
            and len(choice.skipped) == 2
        )
    if name == "evonorm_s0":
        assert "Sigmoid" not in types


# ------------------------------------------------------------------------- eval folding
@pytest.mark.parametrize(
    "name,dim", [("brn", 2), ("brn", 1), ("gbn", 2), ("gbn", 1), ("syncbn", 2)]
)
def test_eval_affine_matches_eval_forward_and_lenet_folds(name, dim):
    m = _build(name, dim, momentum=0.5)
    for seed in range(110, 113):
        m(_input(dim, seed=seed))
    m.eval()
    scale, shift = eval_affine(m)
    x = _input(dim, seed=113)
    torch.testing.assert_close(m(x), _bcast(scale, x) * x + _bcast(shift, x), **TOL)
    if dim == 2:
        model, _ = build_model(compose([f"norm={name}"]))
        model.double()
        for seed in range(3):
            model(
                torch.randn(
                    8, 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
                )
            )
        model.eval()
        folded, count = fold_norms(model)
        assert count == 4
        x = torch.randn(8, 1, 28, 28, dtype=torch.float64)
        with torch.no_grad():
            torch.testing.assert_close(folded(x), model(x), **TOL)


def test_evonorms_do_not_fold():
    for name in ("evonorm_b0", "evonorm_s0"):  # per-sample statistics at eval: not affine
        assert eval_affine(build_norm(name, C).eval()) is None
    # group statistics: per sample
    assert eval_affine(build_norm("evonorm_s0", C, act=False).eval()) is None


def test_evonorm_b0_act_false_folds_at_eval():
    """act=False B0 in eval is x / sqrt(running_var + eps) * gamma + beta: eval_affine gives it, and
    in a ResNet the norm before every residual addition folds into its conv with unchanged
    outputs."""
    m = _build("evonorm_b0", 2, momentum=0.5, act=False)
    for seed in range(120, 123):
        m(_input(2, seed=seed))
    m.eval()
    scale, shift = eval_affine(m)
    x = _input(2, seed=123)
    torch.testing.assert_close(m(x), _bcast(scale, x) * x + _bcast(shift, x), **TOL)

    cfg = compose(
        ["backbone=resnet20", "norm=evonorm_b0", "data.in_channels=3", "data.image_size=16"]
    )
    model, choice = build_model(cfg)
    model.double()
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        model(torch.randn(4, 3, 16, 16, dtype=torch.float64, generator=g))
    model.eval()
    folded, count = fold_norms(model)
    assert count == sum(not norm.act for norm in choice.built) == 9  # bn2 of the 9 blocks
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), **TOL)
