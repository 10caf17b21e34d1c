"""Weight Normalization (`wn`) and WN + mean-only BN (`wn_mobn`): the WN layers against w = g * v /
||v|| computed by hand, the norm layers against their formulas, the data-dependent init, every
backbone, folding, checkpoints and `normbench run` with resume."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY
from torch import nn

from normbench import epochs
from normbench.backbones import build_model
from normbench.config import compose
from normbench.data import load_data
from normbench.fuse import fold_norms
from normbench.norms import NORMS, build_norm, convert_convs
from normbench.norms.conv_weight import WEIGHT_MODES, is_weight_normalized, weight_normalize
from normbench.norms.weight_norm import (
    ChannelBias,
    MeanOnlyBatchNorm,
    data_dependent_init,
    first_batch,
    weight_norm_reference,
)
from normbench.selfcheck import assert_matches_reference, randomize, sample

WN_NORMS = ["wn", "wn_mobn"]
BACKBONES = ["lenet", "resnet20", "resnet18", "shufflenet_v2"]  # ResNet-50: like ResNet-18, slow
SIZE = 16


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread is as fast, and robust on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(norm: str, backbone: str = "lenet", *overrides: str, seed: int = 0) -> nn.Module:
    cfg = compose([f"backbone={backbone}", f"norm={norm}", *overrides])
    if backbone != "lenet":
        cfg.data.in_channels, cfg.data.image_size = 3, SIZE
    torch.manual_seed(seed)
    return build_model(cfg)[0]


def _inputs(backbone: str, batch: int = 8, seed: int = 0) -> torch.Tensor:
    shape = (batch, 1, 28, 28) if backbone == "lenet" else (batch, 3, SIZE, SIZE)
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator) * 2 + 0.5


# ------------------------------------------------------------- the WN layers: w = g * v / ||v||


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_wn_layer_equals_hand_formula_output_and_grads(kind):
    """A weight-normalized conv / linear == the plain op with g * v / ||v|| (norm per output
    channel over all its other axes), in float64: output and the gradients w.r.t. x, g and v."""
    torch.manual_seed(0)
    layer = nn.Conv2d(3, 5, 3, padding=1, bias=False) if kind == "conv" else nn.Linear(7, 5)
    model = nn.Sequential(layer).double()
    assert weight_normalize(model) == 1 and is_weight_normalized(model[0])
    g = model[0].parametrizations.weight.original0
    with torch.no_grad():  # g away from its initial ||v||, so that a wrong formula shows
        g.mul_(torch.rand(g.shape, dtype=torch.float64) + 0.5)

    def by_hand(x, params):
        norms = params["v"].flatten(1).norm(dim=1).view(g.shape)
        w = params["g"] * params["v"] / norms
        if kind == "conv":
            return F.conv2d(x, w, padding=1)
        return F.linear(x, w, params["bias"])

    x = sample((4, 3, 6, 5) if kind == "conv" else (4, 7), seed=3)
    x.requires_grad_(True)
    copies = {name: p.detach().clone().requires_grad_(True) for name, p in layer.named_parameters()}
    named = {"g": "parametrizations.weight.original0", "v": "parametrizations.weight.original1"}
    params = {short: copies[long] for short, long in named.items()}
    if kind == "linear":
        params["bias"] = copies["bias"]
    out, want = layer(x), by_hand(x, params)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    seed = torch.randn(out.shape, dtype=torch.float64)
    got = torch.autograd.grad((out * seed).sum(), [x, *layer.parameters()])
    expected = torch.autograd.grad((want * seed).sum(), [x, *copies.values()])
    for mine, theirs in zip(got, expected, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-12)


def test_weight_normalize_converts_every_conv_and_linear_and_keeps_the_function():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 2)
    ).double()
    x = sample((3, 1, 6, 6), seed=1)
    before = model(x).detach()
    assert convert_convs(model, "weight_norm") == 2
    assert [is_weight_normalized(m) for m in model] == [True, False, False, True]
    torch.testing.assert_close(model(x), before)  # g starts at ||v||: w as it was
    assert {k for k in model.state_dict() if "parametrizations" in k} == {
        f"{i}.parametrizations.weight.original{j}" for i in (0, 3) for j in (0, 1)
    }
    assert model[0].parametrizations.weight.original0.shape == (4, 1, 1, 1)
    assert "weight_norm" in WEIGHT_MODES
    with pytest.raises(ValueError, match="weight_norm"):
        convert_convs(model, "whiten")


@pytest.mark.parametrize("norm", WN_NORMS)
def test_registry_and_build_model_weight_normalize_every_layer(norm):
    spec = NORMS[norm]
    assert spec.conv_weight == "weight_norm" and spec.reference is weight_norm_reference
    assert spec.batch_dependent == (norm == "wn_mobn") and spec.per_device == (norm == "wn_mobn")
    model = _model(norm)
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(layers) == 5 and all(is_weight_normalized(m) for m in layers)
    norm_type = ChannelBias if norm == "wn" else MeanOnlyBatchNorm
    assert sum(isinstance(m, norm_type) for m in model.modules()) == 4


@pytest.mark.parametrize("norm,bad", [("wn", {"init": "lsuv"}), ("wn_mobn", {"momentum": 2})])
def test_bad_options_are_refused(norm, bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        build_norm(norm, 4, **bad)


# --------------------------------------------------------------- the norm layers vs formulas


@pytest.mark.parametrize("dim", [2, 1])
@pytest.mark.parametrize("norm", WN_NORMS)
def test_norm_layer_matches_its_reference_in_train_and_eval(norm, dim):
    shape = (5, 6, 4, 3) if dim == 2 else (5, 6)
    module = randomize(build_norm(norm, 6, dim).double())
    x = sample(shape, seed=3)
    module.train()
    assert_matches_reference(module, weight_norm_reference(module, True, True), x)
    module.eval()
    assert_matches_reference(module, weight_norm_reference(module, False, True), sample(shape, 4))


@pytest.mark.parametrize("dim", [2, 1])
def test_mean_only_bn_subtracts_the_batch_mean_and_tracks_it(dim):
    """Training: per-channel batch mean 0, spread unchanged (no variance division); running_mean
    follows torch's momentum rule; eval: x - running_mean + bias, a mean-only BN's eval_affine."""
    shape = (5, 6, 4, 3) if dim == 2 else (5, 6)
    module = build_norm("wn_mobn", 6, dim, momentum=0.3).double()
    axes = (0, *range(2, len(shape)))
    running = torch.zeros(6, dtype=torch.float64)
    for step in range(3):
        x = sample(shape, seed=10 + step)
        out = module(x)
        torch.testing.assert_close(out.mean(axes), torch.zeros(6, dtype=torch.float64))
        torch.testing.assert_close(out - out.mean(axes, keepdim=True), x - x.mean(axes, True))
        running = 0.7 * running + 0.3 * x.mean(axes)
    torch.testing.assert_close(module.running_mean, running)
    module.eval()
    x = sample(shape, seed=20)
    view = (1, 6) + (1,) * (len(shape) - 2)
    torch.testing.assert_close(module(x), x - running.view(view))
    scale, shift = module.eval_affine()
    torch.testing.assert_close(shift, -running)
    assert torch.equal(scale, torch.ones(6, dtype=torch.float64))


# ---------------------------------------------------------------- data-dependent init


def _pre_activations(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Every norm layer's output (the pre-activation w . x + b) and the logits, in training mode;
    copies, as the in-place ReLUs overwrite the outputs."""
    found: list[torch.Tensor] = []
    hooks = [
        m.register_forward_hook(lambda m, i, out: found.append(out.detach().clone()))
        for m in model.modules()
        if isinstance(m, (ChannelBias, MeanOnlyBatchNorm))
    ]
    with torch.no_grad():
        found.append(model.train()(x))
    for hook in hooks:
        hook.remove()
    return found


@pytest.mark.parametrize("backbone", ["lenet", "resnet20"])
@pytest.mark.parametrize("norm", WN_NORMS)
def test_data_init_gives_zero_mean_unit_variance_pre_activations(norm, backbone):
    model = _model(norm, backbone).double()
    x = _inputs(backbone, batch=16).double()
    before = _pre_activations(model, x)
    assert data_dependent_init(model, x) == sum(map(is_weight_normalized, model.modules()))
    after = _pre_activations(model, x)
    assert len(after) == len(before) > 4
    for values in after:
        mean, std = _moments(values)
        live = std > 1e-9  # channels constant over the batch (dead ReLUs before them) excepted
        assert live.float().mean() > 0.9
        torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-9, rtol=0)
        torch.testing.assert_close(std[live], torch.ones_like(std[live]), atol=1e-9, rtol=0)
    # not so before: the init did it
    assert any((_moments(values)[1] - 1).abs().max() > 0.1 for values in before)


def _moments(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased standard deviation over the batch (and H, W)."""
    axes = (0, *range(2, values.dim()))
    return values.mean(dim=axes), values.std(dim=axes, correction=0)


def test_data_init_is_the_papers_formula_on_the_first_layer():
    """g = 1 / std(v . x / ||v||), b = -mean(v . x / ||v||) / std(...), per output channel."""
    model = _model("wn").double()
    x = _inputs("lenet").double()
    conv, bias = model.conv1, model.norm1
    v = conv.parametrizations.weight.original1.detach().clone()
    t = F.conv2d(x, v / v.flatten(1).norm(dim=1).view(-1, 1, 1, 1), padding=conv.padding)
    std, mean = t.std(dim=(0, 2, 3), correction=0), t.mean(dim=(0, 2, 3))
    data_dependent_init(model, x)
    torch.testing.assert_close(conv.parametrizations.weight.original0.flatten(), 1 / std)
    torch.testing.assert_close(bias.bias.detach(), -mean / std)
    torch.testing.assert_close(conv.parametrizations.weight.original1, v)  # v is kept


def test_data_init_leaves_buffers_and_mode_alone():
    model = _model("wn_mobn").eval()
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    data_dependent_init(model, _inputs("lenet"))
    assert not model.training
    assert all(torch.equal(b, buffers[k]) for k, b in model.named_buffers())


def test_first_batch_is_drawn_from_its_own_seeded_generator():
    data = load_data(compose(["data=synthetic", "data.train_size=64"]).data)
    first = first_batch(data, 8, seed=3)
    again = first_batch(data, 8, seed=3)
    other = first_batch(data, 8, seed=4)
    assert first.shape[0] == 8 and torch.equal(first, again) and not torch.equal(first, other)


# ------------------------------------------------------------ every backbone, folding, state


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("norm", WN_NORMS)
def test_every_backbone_trains_a_step_after_data_init(norm, backbone):
    model = _model(norm, backbone, "norm.init=data")
    x = _inputs(backbone, batch=4)
    assert data_dependent_init(model, x) > 0
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = F.cross_entropy(model(x), torch.arange(4) % 10)
    optimizer.zero_grad()
    loss.backward()
    gs = [m.parametrizations.weight.original0 for m in model.modules() if is_weight_normalized(m)]
    assert all(g.grad is not None and torch.isfinite(g.grad).all() for g in gs)
    optimizer.step()
    assert torch.isfinite(model(x)).all()


def _trained(norm: str, backbone: str, *overrides: str, steps: int = 3) -> nn.Module:
    model = _model(norm, backbone, *overrides).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(steps):  # biases, g and the running mean off their initial values
        loss = model(_inputs(backbone, seed=step).double()).logsumexp(dim=1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.mark.parametrize("backbone", ["lenet", "resnet20"])
@pytest.mark.parametrize("norm", WN_NORMS)
def test_folding_merges_every_norm_into_its_wn_layer(norm, backbone):
    # ResNet-20 with projection shortcuts (B): 1x1 convs and their norms fold too
    model = _trained(norm, backbone, *(["backbone.shortcut=B"] if backbone != "lenet" else []))
    norms = sum(isinstance(m, (ChannelBias, MeanOnlyBatchNorm)) for m in model.modules())
    folded, count = fold_norms(model)
    assert count == norms > 0
    assert not any(isinstance(m, (ChannelBias, MeanOnlyBatchNorm)) for m in folded.modules())
    x = _inputs(backbone, seed=9).double()
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-9, atol=1e-9)
    assert any(is_weight_normalized(m) for m in model.modules()), "the original is unchanged"


@pytest.mark.parametrize("norm", WN_NORMS)
def test_state_dict_round_trip_into_a_fresh_model(norm, tmp_path):
    model = _trained(norm, "lenet")
    keys = set(model.state_dict())
    assert "conv1.parametrizations.weight.original0" in keys and "conv1.weight" not in keys
    torch.save(model.state_dict(), tmp_path / "state.pt")
    fresh = _model(norm, seed=1).double().eval()
    fresh.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    x = _inputs("lenet", seed=9).double()
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


# ------------------------------------------------------------------------- normbench run


@pytest.mark.parametrize("norm", WN_NORMS)
def test_run_with_data_init_resumes_to_the_uninterrupted_result(
    normbench, monkeypatch, tmp_path, norm
):
    args = [*TINY, f"norm={norm}", "norm.init=data", "epochs=3"]
    reference = normbench("run", *args, out=tmp_path / "ref")
    assert reference.code == 0, reference.err
    assert reference.record()["status"] == "completed"
    default = normbench("run", *TINY, f"norm={norm}", "epochs=3", out=tmp_path / "default")
    first_loss = [run.record()["history"][0]["train_loss"] for run in (reference, default)]
    assert first_loss[0] != first_loss[1], "init=data changes the start"

    real_save = epochs.EpochLoop._save_checkpoint

    def save_then_stop(loop, *a, **k):
        real_save(loop, *a, **k)
        raise KeyboardInterrupt  # killed right after epoch 1's checkpoint

    monkeypatch.setattr(epochs.EpochLoop, "_save_checkpoint", save_then_stop)
    assert normbench("run", *args, out=tmp_path / "cut").code == 130
    monkeypatch.setattr(epochs.EpochLoop, "_save_checkpoint", real_save)
    resumed = normbench("run", *args, out=tmp_path / "cut")
    assert "after epoch 1" in resumed.err + resumed.out
    record = resumed.record()
    assert record["status"] == "completed"
    for mine, ref in zip(record["history"], reference.record()["history"], strict=True):
        mine.pop("train_seconds"), ref.pop("train_seconds")
        assert mine == ref


def test_run_wn_mobn_on_simulated_devices(normbench):
    result = normbench("run", *TINY, "norm=wn_mobn", "norm.init=data", "devices=2", "epochs=1")
    assert result.code == 0, result.err
    assert result.record()["status"] == "completed"


def test_run_refuses_a_bad_init_in_one_line(normbench):
    result = normbench("run", *TINY, "norm=wn", "norm.init=lsuv")
    assert result.code == 2
    assert "init must be one of default, data" in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert not (result.root / "runs").exists() or not any((result.root / "runs").iterdir())
