"""Population ("precise") statistics and batch-statistics evaluation (issue 14) on LeNets built by
normbench's own builders, in float64: the recomputed buffers against the formulas applied straight
to the inputs each norm layer received, the model left bit-identical, the drift, SyncBN's gather,
and evaluation with batch statistics against a train-mode forward of each chunk."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from normbench.backbones import build_model
from normbench.config import compose
from normbench.errors import UserError
from normbench.precise import (
    ESTIMATORS,
    apply_precise,
    evaluate_with_batch_stats,
    precise_statistics,
)

TOL = {"rtol": 1e-10, "atol": 1e-12}
SIZE = 12  # the smallest image LeNet takes: a cheap model with conv and fc norms
# (norm, simulated devices, norm options): every norm with running statistics
CASES = [
    ("bn", 1, {}),
    ("syncbn", 1, {}),
    ("brn", 1, {"warmup_start": 0, "rmax_iters": 1, "dmax_iters": 1}),
    ("gbn", 1, {"ghost_batch": 5}),  # 11 images -> virtual batches of 6 and 5
    ("evonorm_b0", 1, {}),
    ("mabn", 1, {"buffer_size": 2, "warmup_iters": 1, "renorm_iters": 1}),
    ("bn", 3, {}),
    ("gbn", 3, {"ghost_batch": 2}),  # 5 images per device -> 3 and 2
    ("evonorm_b0", 3, {}),
    ("mabn", 3, {"buffer_size": 2, "warmup_iters": 1, "renorm_iters": 1}),
    ("wn_mobn", 1, {}),  # mean-only BN: running_mean alone
    ("wn_mobn", 3, {}),
]
WITHOUT_RUNNING_STATS = ["gn", "ln", "in", "frn", "none", "evonorm_s0", "gn_ws"]


def lenet(name: str, devices: int = 1, **options) -> torch.nn.Module:
    """A float64 LeNet of norm `name` on 12 px images whose parameters and running statistics are
    off their initial values."""
    overrides = [f"norm={name}", f"data.image_size={SIZE}", f"devices={devices}"]
    model, _ = build_model(compose(overrides + [f"norm.{k}={v}" for k, v in options.items()]))
    model.double()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator).double())
        model.train()
        for size in (devices * 4, devices * 5):
            model(images(size, seed=size))
    return model


def images(count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 1, SIZE, SIZE, generator=generator, dtype=torch.float64) + 0.5


def batches(devices: int) -> list[torch.Tensor]:
    """Batches of unequal sizes (the population estimator weighs them by their counts)."""
    per_device = [5, 5, 3] if devices > 1 else [11, 11, 7]
    return [images(devices * n, seed=100 + i) for i, n in enumerate(per_device)]


def layer_inputs(model: torch.nn.Module, data: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    """What each module with running statistics received in training-mode forwards of a copy."""
    twin = copy.deepcopy(model).train()
    seen: dict[str, list[torch.Tensor]] = {}
    for name, module in twin.named_modules():
        if "running_var" in module._buffers or "running_mean" in module._buffers:
            seen[name] = []
            module.register_forward_hook(lambda m, a, o, name=name: seen[name].append(a[0].clone()))
    with torch.no_grad():
        for x in data:
            twin(x)
    return seen


def reference(
    name: str, devices: int, options: dict, inputs: list[torch.Tensor], estimator: str
) -> dict[str, torch.Tensor]:
    """The precise buffers of one layer, from the formulas: per device (images d, d + devices,
    ...), per (virtual) batch, per channel."""
    columns = {"running_mean": [], "running_var": []}
    for d in range(devices):
        parts = []
        for x in inputs:
            mine = x[d::devices]
            ghost = options.get("ghost_batch")
            sizes = {11: [6, 5], 7: [7], 5: [3, 2], 3: [3]}[len(mine)] if ghost else [len(mine)]
            parts += list(mine.split(sizes))
        values = [p.transpose(0, 1).reshape(p.shape[1], -1) for p in parts]  # (C, n) each
        pooled = torch.cat(values, dim=1)
        if name == "mabn":
            columns["running_var"].append(pooled.square().mean(1))
        elif estimator == "population":
            columns["running_mean"].append(pooled.mean(1))
            columns["running_var"].append(pooled.var(1, correction=1))
        else:
            columns["running_mean"].append(torch.stack([v.mean(1) for v in values]).mean(0))
            columns["running_var"].append(
                torch.stack([v.var(1, correction=1) for v in values]).mean(0)
            )
    if name in ("mabn", "evonorm_b0"):
        del columns["running_mean"]
    if name == "wn_mobn":
        del columns["running_var"]
    return {buffer: torch.cat(parts) for buffer, parts in columns.items()}


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("name,devices,options", CASES)
def test_precise_buffers_follow_the_formulas(name, devices, options, estimator):
    model = lenet(name, devices, **options)
    data = batches(devices)
    seen = layer_inputs(model, data)
    stats = precise_statistics(model, data, estimator=estimator)
    assert stats.layers == len(seen) == (2 if name == "evonorm_b0" else 4)
    expected_keys = set()
    for layer, inputs in seen.items():
        for buffer, value in reference(name, devices, options, inputs, estimator).items():
            key = f"{layer}.{buffer}"
            expected_keys.add(key)
            torch.testing.assert_close(stats.buffers[key], value, **TOL, msg=key)
    assert set(stats.buffers) == expected_keys


@pytest.mark.parametrize("name,devices,options", CASES)
def test_the_model_is_left_exactly_as_it_was(name, devices, options):
    model = lenet(name, devices, **options)
    model.eval()
    model.get_submodule("norm1").train()  # mixed flags come back module by module
    before = copy.deepcopy(model)
    precise_statistics(model, batches(devices))
    flags = [m.training for m in model.modules()]
    assert flags == [m.training for m in before.modules()]
    for (key, mine), theirs in zip(model.state_dict().items(), before.state_dict().values()):
        assert torch.equal(mine, theirs), key
    # what a norm mirrors on the host (MABN's counters) too: training continues identically
    model.train(), before.train()
    x = images(devices * 4, seed=7)
    with torch.no_grad():
        for _ in range(3):
            assert torch.equal(model(x), before(x))


@pytest.mark.parametrize("name,devices,options", [CASES[0], CASES[5], CASES[6]])
def test_drift_and_apply(name, devices, options):
    model = lenet(name, devices, **options)
    stats = precise_statistics(model, batches(devices))
    for layer, drift in stats.drift.items():
        ema = model.get_buffer(f"{layer}.running_var")
        precise = stats.buffers[f"{layer}.running_var"]
        assert drift == pytest.approx(((ema - precise).abs() / precise).mean().item(), rel=1e-12)
        assert drift > 0
    apply_precise(model, stats)
    state = model.state_dict()
    for key, value in stats.buffers.items():
        assert value.dtype == state[key].dtype and torch.equal(state[key], value), key


def test_the_estimators_agree_on_one_batch_only():
    model = lenet("bn")
    one = [images(11, seed=3)]
    paper, population = (precise_statistics(model, one, estimator=e) for e in ESTIMATORS)
    for key, value in paper.buffers.items():
        torch.testing.assert_close(population.buffers[key], value, **TOL)
    paper, population = (precise_statistics(model, batches(1), estimator=e) for e in ESTIMATORS)
    assert not torch.allclose(
        paper.buffers["norm1.running_var"], population.buffers["norm1.running_var"]
    )


@pytest.mark.parametrize("name", WITHOUT_RUNNING_STATS)
def test_norms_without_running_statistics_have_nothing_to_recompute(name):
    model = lenet(name).eval()
    x = images(6, seed=5)
    with torch.no_grad():
        plain = model(x)
    stats = precise_statistics(model, batches(1))
    assert (stats.layers, stats.buffers, stats.drift) == (0, {}, {})
    with torch.no_grad():
        assert torch.equal(model(x), plain)


def test_batches_may_be_pairs_and_a_bad_estimator_is_refused():
    model = lenet("bn")
    data = batches(1)
    pairs = [(x, torch.zeros(len(x), dtype=torch.long)) for x in data]
    assert (
        precise_statistics(model, pairs).buffers.keys()
        == precise_statistics(model, data).buffers.keys()
    )
    for key, value in precise_statistics(model, pairs).buffers.items():
        assert torch.equal(value, precise_statistics(model, data).buffers[key])
    with pytest.raises(UserError, match="precise_estimator must be one of population, paper"):
        precise_statistics(model, data, estimator="ema")
    with pytest.raises(ValueError, match="no batches"):
        precise_statistics(model, [])


def test_gather_pools_a_synced_layers_batches_over_processes():
    """Two processes in lockstep (faked: process 1 runs first and keeps what it sent): the first
    SyncBN layer's statistics are those of one process on the concatenated batches."""
    model = lenet("syncbn")
    ours, theirs = batches(1), [images(len(x), seed=200 + i) for i, x in enumerate(batches(1))]
    sent: list[torch.Tensor] = []
    precise_statistics(model, theirs, gather=lambda rows: sent.append(rows) or [rows, rows])
    assert len(sent) == 4  # once per synced layer
    received = iter(sent)
    gathered = precise_statistics(model, ours, gather=lambda rows: [rows, next(received)])
    # later layers differ: a real SyncBN would normalize with the pooled statistics
    together = precise_statistics(model, [torch.cat(pair) for pair in zip(ours, theirs)])
    for buffer in ("running_mean", "running_var"):
        key = f"norm1.{buffer}"
        torch.testing.assert_close(gathered.buffers[key], together.buffers[key], **TOL)
    alone = precise_statistics(model, ours)
    assert not torch.allclose(
        alone.buffers["norm1.running_var"], together.buffers["norm1.running_var"]
    )
    calls = []
    precise_statistics(lenet("bn"), ours, gather=lambda rows: calls.append(rows) or [rows])
    assert calls == []  # per-process statistics: nothing to gather


# ----------------------------------------------------------------- batch-statistics evaluation
def chunks(size: int, scored_last: int) -> list[tuple[tuple[torch.Tensor, torch.Tensor], int]]:
    """Three chunks of `size` images, the last with only `scored_last` new ones."""
    out = []
    for i, scored in enumerate((size, size, scored_last)):
        x = images(size, seed=300 + i)
        y = torch.randint(0, 10, (size,), generator=torch.Generator().manual_seed(i))
        out.append(((x, y), scored))
    return out


def expected(model, data, lo: int, hi: int) -> tuple[float, float, float]:
    """(loss sum, correct, images) over the scored images in [lo, hi) of each chunk, each chunk's
    slice forwarded in training mode by a copy of the model."""
    loss = correct = count = 0.0
    for (x, y), scored in data:
        twin = copy.deepcopy(model).train()
        with torch.no_grad():
            logits = twin(x[lo:hi])[: max(0, min(scored, hi) - lo)]
        labels = y[lo:hi][: len(logits)]
        loss += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
        count += len(labels)
    return loss, correct, count


@pytest.mark.parametrize("name,devices", [("bn", 1), ("gbn", 1), ("mabn", 3), ("gn", 1)])
def test_batch_statistics_evaluation_is_a_train_mode_forward_per_chunk(name, devices):
    model = lenet(name, devices).eval()
    before = copy.deepcopy(model.state_dict())
    data = chunks(6 * devices, scored_last=4)
    loss, accuracy = evaluate_with_batch_stats(model, data)
    total, correct, count = expected(model, data, 0, 6 * devices)
    assert count == 12 * devices + 4
    assert loss == pytest.approx(total / count, rel=1e-12)
    assert accuracy == correct / count
    assert not model.training and all(not m.training for m in model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_batch_statistics_evaluation_over_two_processes():
    """Each process forwards its half of every chunk; the average of the sums gives the ratio over
    both (faked: process 1 runs first and keeps what it would all-reduce)."""
    model = lenet("bn")
    data = chunks(12, scored_last=8)  # process 1 scores 2 of its 6 last images
    sent = []
    evaluate_with_batch_stats(model, data, 1, 2, average=lambda t: sent.append(t) or t)
    loss, accuracy = evaluate_with_batch_stats(
        model, data, 0, 2, average=lambda t: (t + sent[0]) / 2
    )
    first, second = expected(model, data, 0, 6), expected(model, data, 6, 12)
    assert second[2] == 6 + 6 + 2
    count = first[2] + second[2]
    assert loss == pytest.approx((first[0] + second[0]) / count, rel=1e-12)
    assert accuracy == pytest.approx((first[1] + second[1]) / count, rel=1e-12)
    with pytest.raises(ValueError, match="does not split over 5"):
        evaluate_with_batch_stats(model, data, 0, 5)
