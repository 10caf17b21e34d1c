"""Data sets held as tensors on the training device: registry, `load_data` and stratified subsets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from normbench.errors import UserError

__all__ = ["DATASETS", "DataSpec", "TensorData", "load_data", "stratified_subset"]


@dataclass
class TensorData:
    """A whole data set as tensors on one device; images already normalized."""

    name: str
    train_x: torch.Tensor  # (N, C, H, W) float32
    train_y: torch.Tensor  # (N,) int64
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    in_channels: int
    image_size: int
    source: str  # path the data was read from, or "synthetic"


@dataclass(frozen=True)
class DataSpec:
    """A registered data set: `loader(cfg, device) -> TensorData` and a one-line description."""

    loader: Callable[[Any, torch.device], TensorData]
    description: str


# --- config helpers shared by the loaders (cfg is an OmegaConf DictConfig or a plain dict) ---

def cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    """`cfg[key]`, or `default` when the key is absent or null."""
    value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    return default if value is None else value


def cfg_int(cfg: Any, key: str, default: int | None = None, minimum: int | None = None) -> int | None:
    """An integer config value (None stays None) at least `minimum`, else UserError naming the key."""
    value = cfg_get(cfg, key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"data.{key} must be an integer, got {value!r}: set e.g. data.{key}={default or 1}")
    if minimum is not None and value < minimum:
        raise UserError(f"data.{key}={value} is too small: use data.{key}>={minimum}")
    return value


def cfg_floats(cfg: Any, key: str, length: int) -> list[float]:
    """A per-channel list of floats (a scalar is broadcast) of exactly `length` entries."""
    value = cfg_get(cfg, key)
    if value is None:
        raise UserError(f"data.{key} is not set: give one value per channel, e.g. data.{key}=[0.5]")
    values = [value] if isinstance(value, (int, float)) else list(value)
    try:
        floats = [float(v) for v in values]
    except (TypeError, ValueError):
        raise UserError(f"data.{key} must be numbers, got {value!r}") from None
    if len(floats) == 1 and length > 1:
        floats = floats * length
    if len(floats) != length:
        raise UserError(f"data.{key} has {len(floats)} values but data.in_channels={length}: give one per channel")
    return floats


def stratified_subset(labels: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """Indices (ascending, int64, on labels' device) of a class-stratified subset of `size` samples.

    Rule: class c with n_c of the N samples gets floor(size * n_c / N) samples; the samples still
    missing go one each to the classes with the largest remainder (size * n_c mod N), ties to the
    smaller label. Every class is thus within one sample of its exact share (balanced data gives
    equal counts up to one). Within a class the samples kept are the first ones of a permutation
    drawn from `torch.Generator().manual_seed(seed)`, so the subset depends only on `labels`,
    `size` and `seed`, never on torch's global RNG state. 1 <= size <= N and size >= the number
    of classes present, else UserError.
    """
    lab = torch.as_tensor(labels).reshape(-1).to("cpu", torch.int64)
    n = lab.numel()
    if isinstance(size, bool) or not isinstance(size, int):
        raise UserError(f"subset size must be an integer, got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UserError(f"data.subset_seed must be an integer, got {seed!r}")
    if size <= 0:
        raise UserError(f"subset size {size} must be positive: use null for the whole set or a size >= 1")
    if size > n:
        raise UserError(f"subset size {size} exceeds the {n} samples available: use at most {n}, or null for all")
    classes, counts = torch.unique(lab, sorted=True, return_counts=True)
    if size < len(classes):
        raise UserError(f"subset size {size} is smaller than the {len(classes)} classes: use at least {len(classes)}")
    quota = counts * size // n
    remainder = counts * size - quota * n
    short = size - int(quota.sum())
    quota[torch.argsort(-remainder, stable=True)[:short]] += 1

    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    by_class = torch.argsort(lab[perm], stable=True)
    index = perm[by_class]  # grouped by class, random order within each class
    cls = torch.searchsorted(classes, lab[index])
    rank = torch.arange(n) - (torch.cumsum(counts, 0) - counts)[cls]
    keep = index[rank < quota[cls]]
    return keep.sort().values.to(torch.as_tensor(labels).device)


def load_data(cfg: Any, device: torch.device | str = "cpu") -> TensorData:
    """Load the data set named by `cfg["name"]` onto `device`."""
    name = cfg_get(cfg, "name")
    if name not in DATASETS:
        known = ", ".join(sorted(DATASETS))
        raise UserError(f"unknown data set {name!r}: choose data=<name> with one of {known}")
    return DATASETS[name].loader(cfg, torch.device(device))


# Imported last: the loaders import TensorData and the helpers above from this module.
from normbench.data import fashion_mnist, synthetic  # noqa: E402

DATASETS: dict[str, DataSpec] = {
    "fashion_mnist": DataSpec(fashion_mnist.load, fashion_mnist.DESCRIPTION),
    "synthetic": DataSpec(synthetic.load, synthetic.DESCRIPTION),
}
