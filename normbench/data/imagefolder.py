"""ImageNet-layout image folders (`data.path` with `train/` and `val/`, one sub-folder per class,
e.g. Imagenette), read by DataLoader workers: too big to live on the device.

Training images get the standard ImageNet augmentation (random-resized crop to `data.image_size`,
horizontal flip), evaluation images a resize of the shorter side to image_size / 0.875 and a center
crop. Workers decode and crop to uint8 tensors in pinned memory (on CUDA); the copy to the device is
non-blocking, and the conversion to float and normalization with data.mean/std happen on the device
(4x less to copy than float32).

Validation images (data.val_size) are held out of train/ (stratified, seeded by data.subset_seed)
and get the evaluation transform.

Reproducibility: at the start of each epoch one seed is drawn from the run's CPU generator (the one
the runner checkpoints); it draws the epoch's permutation and one seed per image, and each image's
crop and flip are made under its own seed in whichever worker loads it. So the order and every crop
are the same for a given run seed whatever `data.workers` is, and a resumed run sees what an
uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from normbench.data.prep import (
    cfg_bool,
    cfg_get,
    cfg_int,
    cfg_mean_std,
    cfg_val_size,
    split_train_val,
    stratified_subset,
)
from normbench.data.source import Batch, Shard, check_eval_split, eval_chunk_order
from normbench.errors import UserError
from normbench.values import bad_value, is_number

DESCRIPTION = (
    "image folders in the ImageNet layout (data.path with train/ and val/ class sub-folders, "
    "e.g. Imagenette), read by DataLoader workers"
)

IN_CHANNELS = 3  # images are converted to RGB
# eval: resize the shorter side to image_size / 0.875, center-crop image_size
EVAL_RESIZE_RATIO = 0.875
MAX_EVAL_BATCH = 256  # bigger eval batches only pile up in the workers' shared memory
SEED_HIGH = 2**63 - 1


class Images(Dataset):
    """(path, label) samples -> (uint8 (3, H, W) tensor, label). A training key is (index, seed):
    the random transform then runs under that seed, in a forked RNG so the process's own stream is
    untouched."""

    def __init__(self, samples: list[tuple[str, int]], transform: Any) -> None:
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        # deferred: torchvision is slow to import, and only image folders need it
        from torchvision.datasets.folder import default_loader

        index, seed = key if isinstance(key, tuple) else (key, None)
        path, label = self.samples[index]
        image = default_loader(path)  # PIL, RGB
        if seed is None:
            return self.transform(image), label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image), label


class SeededOrder(Sampler):
    """A permutation of n images with a seed for each, both drawn from `epoch_seed` (set before each
    epoch). `positions` (set per epoch; None: all) keeps only those positions of it: a data-parallel
    process's shard."""

    def __init__(self, n: int) -> None:
        self.n, self.epoch_seed = n, 0
        self.positions: list[int] | None = None

    def __len__(self) -> int:
        return self.n if self.positions is None else len(self.positions)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.epoch_seed)
        order = torch.randperm(self.n, generator=generator).tolist()
        seeds = torch.randint(0, SEED_HIGH, (self.n,), generator=generator).tolist()
        if self.positions is not None:
            return iter([(order[i], seeds[i]) for i in self.positions])
        return iter(zip(order, seeds))


class ChunkOrder(Sampler):
    """Batches of dataset indices, set before each pass (`chunks`): eval_chunks' seeded order."""

    def __init__(self) -> None:
        self.chunks: list[list[int]] = []

    def __len__(self) -> int:
        return len(self.chunks)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.chunks)


@dataclass
class FolderData:
    """Train and val image folders behind DataLoaders; see the module docstring."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    source: str
    train_set: Images
    test_set: Images
    val_set: Images  # held out of train/, evaluation transform; no samples when data.val_size=0
    mean: list[float]
    std: list[float]
    workers: int
    target_device: torch.device
    train_augmentation: str
    _loaders: dict[Any, DataLoader] = field(default_factory=dict, repr=False)

    @property
    def train_size(self) -> int:
        return len(self.train_set)

    @property
    def test_size(self) -> int:
        return len(self.test_set)

    @property
    def val_size(self) -> int:
        return len(self.val_set)

    @property
    def device(self) -> torch.device:
        return self.target_device

    @property
    def augmentation(self) -> str:
        return self.train_augmentation

    @property
    def pin_memory(self) -> bool:
        return self.target_device.type == "cuda"

    @property
    def pipeline(self) -> str:
        return f"DataLoader, {self.workers} workers" + (
            ", pinned memory" if self.pin_memory else ""
        )

    def _loader(self, split: str, batch: int | None) -> DataLoader:
        """One DataLoader per (split, batch), kept so its workers persist across epochs; batch
        None: eval_chunks' batches (a ChunkOrder, set before each pass)."""
        if (split, batch) not in self._loaders:
            train = split == "train"
            dataset = {"train": self.train_set, "test": self.test_set, "val": self.val_set}[split]
            batching: dict[str, Any] = (
                {"batch_sampler": ChunkOrder()}
                if batch is None
                else {
                    "batch_size": batch,
                    "sampler": SeededOrder(len(dataset)) if train else None,
                    "drop_last": train,
                }
            )
            self._loaders[split, batch] = DataLoader(
                dataset,
                **batching,
                num_workers=self.workers,
                persistent_workers=self.workers > 0,
                pin_memory=self.pin_memory,
                # its own: creating an iterator never draws from the global RNG
                generator=torch.Generator(),
            )
        return self._loaders[split, batch]

    def _on_device(self, loader: DataLoader, count: int | None) -> Iterator[Batch]:
        """Batches copied to the device (non-blocking from pinned memory) and normalized there."""
        device = self.target_device
        mean = torch.tensor(self.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, -1, 1, 1)
        for images, labels in (
            loader if count is None else (b for _, b in zip(range(count), loader))
        ):
            x = (
                images.to(device, non_blocking=True)
                .to(torch.float32)
                .div_(255.0)
                .sub_(mean)
                .div_(std)
            )
            yield x, labels.to(device, non_blocking=True)

    def train_batches(
        self, batch: int, count: int, generator: torch.Generator, shard: Shard | None = None
    ) -> Iterator[Batch]:
        micro = batch if shard is None else batch * shard.devices  # images per micro-batch
        loader = self._loader("train", micro)
        loader.sampler.positions = None if shard is None else shard.positions(count, batch).tolist()
        if count > len(loader):
            raise ValueError(
                f"{count} batches of {micro} asked for, the training set has {len(loader)}"
            )
        loader.sampler.epoch_seed = int(torch.randint(0, SEED_HIGH, (), generator=generator))
        return self._on_device(loader, count)

    def test_batches(self, eval_batch: int) -> Iterator[Batch]:
        return self._on_device(self._loader("test", min(eval_batch, MAX_EVAL_BATCH)), None)

    def val_batches(self, eval_batch: int) -> Iterator[Batch]:
        if not self.val_size:
            return iter(())  # no loader, no workers
        return self._on_device(self._loader("val", min(eval_batch, MAX_EVAL_BATCH)), None)

    def eval_chunks(
        self, split: str, size: int, generator: torch.Generator
    ) -> Iterator[tuple[Batch, int]]:
        check_eval_split(split)
        count = self.test_size if split == "test" else self.val_size
        return self._chunk_batches(split, eval_chunk_order(count, size, generator))

    def _chunk_batches(
        self, split: str, chunks: list[tuple[torch.Tensor, int]]
    ) -> Iterator[tuple[Batch, int]]:
        """The chunks' images on the device. A generator: the split's one chunk loader gets this
        order when iteration starts, so an earlier, unstarted call's order is not overwritten."""
        if not chunks:
            return
        loader = self._loader(split, None)
        loader.batch_sampler.chunks = [index.tolist() for index, _ in chunks]
        for batch, (_, new) in zip(self._on_device(loader, None), chunks):
            yield batch, new

    def close(self) -> None:
        """Stop the persistent workers now rather than at garbage collection."""
        for loader in self._loaders.values():
            iterator = getattr(loader, "_iterator", None)
            if iterator is not None and hasattr(iterator, "_shutdown_workers"):
                iterator._shutdown_workers()
        self._loaders.clear()


def scan(folder: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """(class names, samples) of one split folder, via torchvision's ImageFolder, as a one-line
    UserError."""
    from torchvision.datasets import ImageFolder  # deferred: see Images.__getitem__

    layout = "one sub-folder of images per class, as in ImageNet/Imagenette"
    if not folder.is_dir():
        raise UserError(
            f"{folder} is missing: data.path must hold train/ and val/, each with {layout}"
        )
    try:
        found = ImageFolder(str(folder))
    except FileNotFoundError as e:  # no class folders, or a class folder without images
        raise UserError(f"{folder}: {str(e).splitlines()[0]}: it must hold {layout}") from None
    except OSError as e:
        raise UserError(
            f"{folder}: cannot read ({e.strerror or e}): check its permissions"
        ) from None
    return found.classes, found.samples


Samples = list[tuple[str, int]]  # (path, label) per image


def subset(samples: Samples, size: int | None, seed: int) -> Samples:
    if size is None or size == len(samples):
        return samples
    index = stratified_subset(torch.tensor([label for _, label in samples]), size, seed)
    return [samples[i] for i in index.tolist()]


def choose_samples(cfg: Any, root: Path, num_classes: int | None) -> tuple[Samples, ...]:
    """(train, val, test) samples per data.train_size/val_size/test_size/subset_seed: val held
    out of train/ first, then the training subset drawn from the rest (`split_train_val`)."""
    train_size = cfg_int(cfg, "train_size", None, minimum=1)
    test_size = cfg_int(cfg, "test_size", None, minimum=1)
    seed = cfg_int(cfg, "subset_seed", 0)
    train_samples, test_samples = scan_splits(root, num_classes)
    val_size = cfg_val_size(cfg, len({label for _, label in train_samples}))
    labels = torch.tensor([label for _, label in train_samples])
    train, val = split_train_val(labels, train_size, val_size, seed)
    return (
        [train_samples[i] for i in train.tolist()],
        [train_samples[i] for i in val.tolist()],
        subset(test_samples, test_size, seed),
    )


def load(cfg: Any, device: torch.device) -> FolderData:
    """Scan data.path per `cfg` (keys of configs/data/imagefolder.yaml); images are read while
    training."""
    from torchvision import transforms as T  # deferred: see Images.__getitem__

    root = folder_root(cfg)
    num_classes = cfg_int(cfg, "num_classes", None, minimum=2)
    if cfg_int(cfg, "in_channels", IN_CHANNELS) != IN_CHANNELS:
        raise UserError("imagefolder images are read as RGB: set data.in_channels=3")
    image_size = cfg_int(cfg, "image_size", 224, minimum=8)
    mean, std = cfg_mean_std(cfg, IN_CHANNELS)
    workers = cfg_int(cfg, "workers", 4, minimum=0)
    augment, flip = cfg_bool(cfg, "augment", True), cfg_bool(cfg, "flip", True)
    scale = crop_scale(cfg)

    train_samples, val_samples, test_samples = choose_samples(cfg, root, num_classes)
    evaluation = [T.Resize(int(image_size / EVAL_RESIZE_RATIO)), T.CenterCrop(image_size)]
    if augment:
        training = [T.RandomResizedCrop(image_size, scale=tuple(float(s) for s in scale))]
        training += [T.RandomHorizontalFlip()] if flip else []
        described = (
            f"random-resized crop to {image_size} px (scale {scale[0]:g}-{scale[1]:g})"
            + (" + horizontal flip" if flip else "")
            + ", in the DataLoader workers"
        )
    else:
        training, described = list(evaluation), "none"
    evaluate = T.Compose([*evaluation, T.PILToTensor()])
    return FolderData(
        name="imagefolder",
        num_classes=num_classes,
        in_channels=IN_CHANNELS,
        image_size=image_size,
        source=str(root),
        train_set=Images(train_samples, T.Compose([*training, T.PILToTensor()])),
        test_set=Images(test_samples, evaluate),
        val_set=Images(val_samples, evaluate),
        mean=mean,
        std=std,
        workers=workers,
        target_device=device,
        train_augmentation=described,
    )


def folder_root(cfg: Any) -> Path:
    """data.path, which must be an existing folder."""
    path = cfg_get(cfg, "path")
    if path is None:
        raise UserError(
            "data=imagefolder needs data.path=DIR: a folder with train/ and val/, each holding "
            "one sub-folder of images per class (ImageNet/Imagenette layout)"
        )
    root = Path(str(path)).expanduser()
    if not root.is_dir():
        raise UserError(
            f"data.path={root} is not a folder: point it at the folder holding train/ and val/"
        )
    return root


def crop_scale(cfg: Any) -> list:
    """data.crop_scale: [min, max] area fractions of the random-resized crop."""
    scale = cfg_get(cfg, "crop_scale", [0.08, 1.0])
    scale = list(scale) if not isinstance(scale, (str, int, float)) else [scale]
    if not (len(scale) == 2 and all(is_number(s) for s in scale) and 0 < scale[0] <= scale[1] <= 1):
        raise bad_value(
            "data.crop_scale",
            "[min, max] area fractions with 0 < min <= max <= 1",
            scale,
            ": e.g. data.crop_scale=[0.08,1.0]",
        )
    return scale


def scan_splits(
    root: Path, num_classes: int | None
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(train samples, val samples) of root/train and root/val, which must have the same
    `num_classes` class folders."""
    classes, train_samples = scan(root / "train")
    val_classes, test_samples = scan(root / "val")
    if val_classes != classes:
        only = sorted(set(classes) ^ set(val_classes))[:3]
        raise UserError(
            f"{root}: train/ and val/ have different class folders (e.g. {', '.join(only)}): "
            "give both the same classes"
        )
    if num_classes != len(classes):
        raise UserError(
            f"{root}/train has {len(classes)} class folders but data.num_classes={num_classes}: "
            f"set data.num_classes={len(classes)}"
        )
    return train_samples, test_samples
