"""The validation split (data.val_size) and the seeded fixed-size evaluation chunks (eval_chunks),
on synthetic data, tiny idx files, image folders and real Fashion-MNIST."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from test_data import N_TRAIN, config, no_system_copy, tiny_fashion  # noqa: F401
from test_mnist_cifar_imagefolder import folder_config, write_image_folder
from test_real_data import HAVE_DATA  # CI must have the data: that module says so

from normbench.data import TensorData, eval_chunk_order, load_data, stratified_subset
from normbench.data.prep import normalize, split_train_val
from normbench.data.synthetic import _generator, make_patterns, make_split
from normbench.errors import UserError


def rows(x: torch.Tensor) -> list[bytes]:
    """Each image's bytes: images compared by content, independent of how they were picked."""
    return [r.numpy().tobytes() for r in x.detach().cpu().flatten(1)]


def assert_stratified(labels: torch.Tensor, of: torch.Tensor, classes: int) -> None:
    """`labels` hold each class within one image of its share of `of`."""
    counts = torch.bincount(labels.cpu(), minlength=classes).double()
    share = torch.bincount(of.cpu(), minlength=classes).double() * labels.numel() / of.numel()
    assert ((counts - share).abs() < 1).all(), (counts.tolist(), share.tolist())


# --- split_train_val: the rule every data set uses ---


def unbalanced_labels() -> torch.Tensor:
    counts = [50, 30, 15, 5]
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    return labels[torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(3))]


def test_split_is_disjoint_stratified_and_val_ignores_train_size():
    labels = unbalanced_labels()
    train, val = split_train_val(labels, 40, 20, seed=5)
    assert val.numel() == 20 and train.numel() == 40
    assert not set(train.tolist()) & set(val.tolist())
    assert val.tolist() == sorted(val.tolist()) and train.tolist() == sorted(train.tolist())
    assert_stratified(labels[val], labels, 4)
    assert_stratified(labels[train], labels, 4)
    for train_size in (10, 60, None):
        other_train, other_val = split_train_val(labels, train_size, 20, seed=5)
        assert torch.equal(other_val, val)
        assert not set(other_train.tolist()) & set(val.tolist())
    everything_else, _ = split_train_val(labels, None, 20, seed=5)
    assert sorted(everything_else.tolist() + val.tolist()) == list(range(100))
    _, moved = split_train_val(labels, 40, 20, seed=6)
    assert not torch.equal(moved, val)  # subset_seed moves it


def test_split_without_val_is_todays_subset():
    labels = unbalanced_labels()
    train, val = split_train_val(labels, 40, 0, seed=5)
    assert torch.equal(train, stratified_subset(labels, 40, 5)) and val.numel() == 0
    assert torch.equal(split_train_val(labels, None, 0, seed=5)[0], torch.arange(100))


def test_split_too_big_names_the_fix():
    labels = unbalanced_labels()
    with pytest.raises(UserError) as err:
        split_train_val(labels, 90, 20, seed=0)
    assert "data.val_size=20 + data.train_size=90" in str(err.value)
    assert "the 100 images" in str(err.value) and "at most 100" in str(err.value)
    with pytest.raises(UserError, match="data.val_size<100"):
        split_train_val(labels, None, 100, seed=0)
    split_train_val(labels, 80, 20, seed=0)  # exactly all of them is fine


# --- synthetic ---


def test_synthetic_val_size_0_is_todays_data_bit_for_bit():
    cfg = config("synthetic")
    assert cfg.val_size == 0
    data = load_data(cfg)
    patterns = make_patterns(10, 1, 28, 0)
    train_x, train_y = make_split(patterns, 512, 1.0, _generator(0, 1))
    test_x, test_y = make_split(patterns, 256, 1.0, _generator(0, 2))
    assert torch.equal(data.train_x, train_x) and torch.equal(data.train_y, train_y)
    assert torch.equal(data.test_x, test_x) and torch.equal(data.test_y, test_y)
    assert data.val_size == 0 and data.val_x is None
    assert list(data.val_batches(64)) == []
    assert list(data.eval_chunks("val", 8, torch.Generator())) == []


def test_synthetic_val_is_held_out_of_the_train_stream():
    data = load_data(config("synthetic", val_size=100))
    assert (data.train_size, data.val_size, data.test_size) == (512, 100, 256)
    images, labels = make_split(make_patterns(10, 1, 28, 0), 612, 1.0, _generator(0, 1))
    generated = rows(images)
    train, val = rows(data.train_x), rows(data.val_x)
    assert sorted(train + val) == sorted(generated)  # all generated, none twice
    assert not set(val) & set(rows(data.test_x))
    assert_stratified(data.val_y, labels, 10)
    assert torch.equal(data.test_x, load_data(config("synthetic")).test_x)
    torch.manual_seed(1)  # the run's seed reaches the global RNG: it must not matter
    again = load_data(config("synthetic", val_size=100))
    assert torch.equal(again.val_x, data.val_x) and torch.equal(again.train_x, data.train_x)
    batches = list(data.val_batches(32))
    assert [x.shape[0] for x, _ in batches] == [32, 32, 32, 4]
    assert torch.equal(torch.cat([x for x, _ in batches]), data.val_x)
    assert torch.equal(torch.cat([y for _, y in batches]), data.val_y)


@pytest.mark.parametrize(
    "value,words",
    [
        (-1, ["data.val_size=-1", "data.val_size>=0"]),
        ("many", ["data.val_size", "integer"]),
        (True, ["data.val_size", "integer"]),
        (2.5, ["data.val_size", "integer"]),
        (5, ["data.val_size=5", "10 classes", "data.val_size>=10", "0 for no"]),
    ],
)
def test_bad_val_size_is_one_line_naming_the_fix(value, words):
    with pytest.raises(UserError) as err:
        load_data(config("synthetic", val_size=value))
    assert "\n" not in str(err.value)
    for word in words:
        assert word in str(err.value), (word, str(err.value))


# --- tensor sets read from files (tiny Fashion-MNIST files) ---


@pytest.mark.usefixtures("no_system_copy")
def test_tensor_set_val_from_idx_files(tmp_path):
    arrays = tiny_fashion(tmp_path / "fm")
    root = str(tmp_path / "fm")
    cfg = config("fashion_mnist", root=root, train_size=30)
    today = load_data(cfg)
    images = torch.from_numpy(arrays["train_images"]).unsqueeze(1)
    labels = torch.from_numpy(arrays["train_labels"]).long()
    index = stratified_subset(labels, 30, 0)  # what train_size=30 took before val_size existed
    assert torch.equal(today.train_x, normalize(images[index], [0.2860], [0.3530], "cpu"))
    assert today.val_size == 0

    data = load_data(config("fashion_mnist", root=root, train_size=30, val_size=20))
    assert (data.train_size, data.val_size) == (30, 20)
    assert not set(rows(data.val_x)) & (set(rows(data.train_x)) | set(rows(data.test_x)))
    assert set(rows(data.val_x)) <= set(rows(load_data(config("fashion_mnist", root=root)).train_x))
    assert torch.bincount(data.val_y, minlength=10).tolist() == [2] * 10
    assert torch.equal(data.test_x, today.test_x)
    with pytest.raises(UserError, match=f"exceed the {N_TRAIN} images"):
        load_data(config("fashion_mnist", root=root, train_size=45, val_size=20))


# --- eval_chunks ---


def numbered(n: int, classes: int = 2) -> TensorData:
    """A TensorData whose test image i is all i (sorted by class, as ImageFolder stores it)."""
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    y = torch.arange(n) * classes // n
    return TensorData("t", x, y, x.clone(), y.clone(), classes, 1, 2, "test")


def scored(chunks) -> list[int]:
    return [int(v) for (x, _), new in chunks for v in x[:new, 0, 0, 0]]


@pytest.mark.parametrize("n,size", [(100, 32), (96, 32), (5, 8), (3, 10), (1, 4)])
def test_eval_chunks_are_exact_and_score_every_image_once(n, size):
    data = numbered(n, classes=1 if n < 2 else 2)
    chunks = list(data.eval_chunks("test", size, torch.Generator().manual_seed(0)))
    assert all(x.shape[0] == size and y.shape[0] == size for (x, y), _ in chunks)
    assert len(chunks) == -(-n // size)
    assert sorted(scored(chunks)) == list(range(n))
    assert [new for _, new in chunks] == [size] * (n // size) + ([n % size] if n % size else [])
    order = [int(v) for (x, _), _ in chunks for v in x[:, 0, 0, 0]]
    first = scored(chunks)
    # the filled-up tail repeats the order from its start, as often as needed
    assert order == (first * (1 + len(order) // n))[: len(order)]
    for (x, y), _ in chunks:
        assert torch.equal(y, data.test_y[x[:, 0, 0, 0].long()])


def test_eval_chunks_order_comes_from_the_generator_when_called():
    data = numbered(64)
    generator = torch.Generator().manual_seed(1)
    chunks = data.eval_chunks("test", 16, generator)
    torch.randperm(10, generator=generator)  # drawn after the call: must not change the chunks
    first = scored(chunks)
    order = eval_chunk_order(64, 16, torch.Generator().manual_seed(1))
    assert first == torch.cat([index for index, _ in order]).tolist()
    assert first != scored(data.eval_chunks("test", 16, torch.Generator().manual_seed(2)))
    # stored sorted by class, yet no chunk is all one class
    for (_, y), _ in data.eval_chunks("test", 16, torch.Generator().manual_seed(0)):
        assert y.unique().numel() == 2


def test_eval_chunks_of_the_val_split_and_bad_arguments():
    data = load_data(config("synthetic", val_size=30))
    chunks = list(data.eval_chunks("val", 8, torch.Generator().manual_seed(0)))
    assert [new for _, new in chunks] == [8, 8, 8, 6]
    got = sorted(rows(torch.cat([x[:new] for (x, _), new in chunks])))
    assert got == sorted(rows(data.val_x))
    with pytest.raises(ValueError, match="train"):
        data.eval_chunks("train", 8, torch.Generator())
    with pytest.raises(ValueError, match="size=0"):
        data.eval_chunks("test", 0, torch.Generator())


# --- image folders ---


def test_imagefolder_val_split_and_chunks(tmp_path):
    root = write_image_folder(tmp_path / "imgs", train_per_class=8)  # 16 train, 6 test images
    data = load_data(folder_config(root, val_size=4, train_size=6))
    assert (data.train_size, data.val_size, data.test_size) == (6, 4, 6)
    train = {path for path, _ in data.train_set.samples}
    val = {path for path, _ in data.val_set.samples}
    assert not train & val and all("/train/" in path for path in val)
    assert sorted(label for _, label in data.val_set.samples) == [0, 0, 1, 1]
    assert data.val_set.transform is data.test_set.transform  # the eval transform, no augmentation
    other = load_data(folder_config(root, val_size=4, train_size=12))
    assert other.val_set.samples == data.val_set.samples
    assert load_data(folder_config(root)).val_size == 0

    fixed = torch.cat([x for x, _ in data.val_batches(3)])
    assert fixed.shape == (4, 3, 32, 32)
    assert torch.equal(fixed, torch.cat([x for x, _ in data.val_batches(4)]))
    test_x = torch.cat([x for x, _ in data.test_batches(6)])
    chunks = list(data.eval_chunks("test", 4, torch.Generator().manual_seed(0)))
    assert [(x.shape[0], new) for (x, _), new in chunks] == [(4, 4), (4, 2)]
    order = torch.cat([i for i, _ in eval_chunk_order(6, 4, torch.Generator().manual_seed(0))])
    torch.testing.assert_close(torch.cat([x for (x, _), _ in chunks]), test_x[order])
    with pytest.raises(UserError, match="exceed the 16 images"):
        load_data(folder_config(root, val_size=4, train_size=13))
    data.close()


def test_imagefolder_chunks_follow_each_calls_order_with_workers(tmp_path):
    root = write_image_folder(tmp_path / "imgs")
    data = load_data(folder_config(root, workers=1))
    test_x = torch.cat([x for x, _ in data.test_batches(6)])
    for seed in (0, 1, 2):
        order = torch.cat(
            [i for i, _ in eval_chunk_order(6, 4, torch.Generator().manual_seed(seed))]
        )
        chunks = data.eval_chunks("test", 4, torch.Generator().manual_seed(seed))
        torch.testing.assert_close(torch.cat([x for (x, _), _ in chunks]), test_x[order])
    data.close()


# --- real Fashion-MNIST ---


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_DATA, reason="apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist_val_split():
    full = load_data(config("fashion_mnist"))
    small = load_data(config("fashion_mnist", train_size=1000, val_size=2000))
    big = load_data(config("fashion_mnist", train_size=5000, val_size=2000))
    assert torch.equal(small.val_x, big.val_x) and torch.equal(small.val_y, big.val_y)
    val = set(rows(small.val_x))
    assert len(val) == 2000 and val <= set(rows(full.train_x))
    assert not val & set(rows(big.train_x)) and not val & set(rows(full.test_x))
    assert torch.bincount(small.val_y, minlength=10).tolist() == [200] * 10
    assert torch.bincount(big.train_y, minlength=10).tolist() == [500] * 10
    assert torch.equal(small.test_x, full.test_x)
    today = load_data(config("fashion_mnist", train_size=1000))
    assert torch.equal(today.train_x, full.train_x[stratified_subset(full.train_y, 1000, 0)])
    moved = load_data(
        OmegaConf.merge(config("fashion_mnist"), {"val_size": 2000, "subset_seed": 1})
    )
    assert not torch.equal(moved.val_x, small.val_x)
