"""l2norm (ParseNet / SSD): the formula, forward and all gradients, train and eval; per-position
unit norm times the scale; eps inside the square root; options; a LeNet run through the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import QUICK_RUN

from normbench.norms import NORMS, build_norm
from normbench.norms.l2norm import l2norm_reference
from normbench.selfcheck import assert_matches_reference, randomize, sample

SHAPES = {2: (5, 6, 4, 3), 1: (5, 6)}


@pytest.mark.parametrize("dim", [2, 1])
def test_matches_the_formula_in_train_and_eval(dim):
    module = randomize(build_norm("l2norm", 6, dim).double())
    for train, seed in ((True, 3), (False, 4)):
        module.train(train)
        assert_matches_reference(
            module, l2norm_reference(module, train, True), sample(SHAPES[dim], seed)
        )


@pytest.mark.parametrize("dim", [2, 1])
def test_every_position_has_the_scale_as_its_norm(dim):
    """Fresh layer (scale 20, shift 0): each position's C-vector has L2 norm 20, direction kept."""
    x = sample(SHAPES[dim], 3)
    out = build_norm("l2norm", 6, dim).double()(x)
    torch.testing.assert_close(out.norm(dim=1), torch.full_like(out.norm(dim=1), 20.0))
    torch.testing.assert_close(out / out.norm(dim=1, keepdim=True), x / x.norm(dim=1, keepdim=True))


def test_scale_init_option_and_the_ssd_defaults():
    module = build_norm("l2norm", 8, scale_init=10)
    assert torch.equal(module.weight, torch.full((8,), 10.0))
    assert torch.equal(module.bias, torch.zeros(8))
    assert module.eps == 1e-10
    assert "scale_init=10.0" in repr(module)
    spec = NORMS["l2norm"]
    assert (spec.batch_dependent, spec.includes_activation, spec.supports_1d) == (
        False,
        False,
        True,
    )
    assert spec.scale_invariant and spec.reference is l2norm_reference


def test_each_sample_is_normalized_alone():
    module = randomize(build_norm("l2norm", 6).double())
    x = sample(SHAPES[2], 3)
    torch.testing.assert_close(module(x)[:2], module(x[:2]), rtol=0, atol=0)


def test_eps_is_inside_the_square_root_so_a_zero_position_has_finite_gradients():
    module = build_norm("l2norm", 6, dim=1, eps=1e-4).double()
    x = torch.zeros(2, 6, dtype=torch.float64, requires_grad=True)
    out = module(x)
    assert torch.equal(out, torch.zeros_like(out))
    out[0, 2].backward()
    # d(w * x / sqrt(|x|^2 + eps))/dx at 0 is w / sqrt(eps) on the diagonal
    want = torch.zeros(2, 6, dtype=torch.float64)
    want[0, 2] = 20.0 / math.sqrt(1e-4)
    torch.testing.assert_close(x.grad, want)


@pytest.mark.parametrize(
    "options,message",
    [
        ({"scale_init": -1.0}, "scale_init"),
        ({"scale_init": "big"}, "scale_init"),
        ({"eps": 0}, "eps"),
        ({"groups": 2}, "no option groups"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        build_norm("l2norm", 6, **options)


def test_wrong_layout_is_refused():
    with pytest.raises(ValueError, match="dim=2"):
        build_norm("l2norm", 6)(torch.randn(4, 6))


def test_autocast_input_is_normalized_in_the_parameters_dtype():
    module = build_norm("l2norm", 6)
    x = torch.randn(3, 6, 2, 2)
    torch.testing.assert_close(module(x.bfloat16()), module(x.bfloat16().float()))


def test_a_lenet_run_records_the_layers(normbench):
    result = normbench("run", *QUICK_RUN, "norm=l2norm", "norm.scale_init=10")
    assert result.code == 0, result.err
    (record_file,) = result.root.glob("runs/*/record.json")
    record = json.loads(record_file.read_text())
    layers = record["setup"]["norm_layers"]
    assert layers["norm1"] == "L2Norm(6, scale_init=10.0, eps=1e-10, dim=2)"
    assert layers["norm4"] == "L2Norm(84, scale_init=10.0, eps=1e-10, dim=1)"
    assert record["status"] == "completed" and math.isfinite(record["metrics"]["test_error"])
