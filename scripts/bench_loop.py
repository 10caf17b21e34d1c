"""Loop-overhead benchmark: one LeNet-BN Fashion-MNIST training epoch through normbench's `train_epoch`
(with its TensorBoard hook, as `normbench run` calls it) against (a) a minimal hand-written loop over the
same device tensors and (b) the textbook torchvision Dataset + DataLoader loop. All in one process, the
three loops interleaved and repeated; prints median seconds per epoch and the ratios.

    python scripts/bench_loop.py                       # batch 256 (full epoch) and batch 2 (subset)
    python scripts/bench_loop.py --batch 256 --repeats 5
    python scripts/bench_loop.py --augment             # also time normbench with on-device crop + flip

Targets (issue 2): normbench <= 1.05x minimal at batch 256, <= 1.10x at batch 2; >= 2.5x faster than
the DataLoader loop at batch 256.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.tensorboard import SummaryWriter

from normbench.backbones import build_model
from normbench.config import compose
from normbench.data import black, load_data, stratified_subset, tensor_batches
from normbench.data.augment import Augment, from_config
from normbench.data.fashion_mnist import DEBIAN_DIR
from normbench.optim import LRSchedule, build_optimizer, scaled_lr
from normbench.train import train_epoch


def fresh_model(cfg):
    torch.manual_seed(0)
    model, norm_layer = build_model(cfg)
    return model, norm_layer


def normbench_epoch(cfg, x, y, batch, logdir: Path, augment: Augment | None = None) -> float:
    model, norm_layer = fresh_model(cfg)
    lr = scaled_lr(cfg, batch)
    optimizer = build_optimizer(model, norm_layer.built, cfg, lr)
    steps = x.shape[0] // batch
    lr_at = LRSchedule(cfg, lr, steps)
    writer = SummaryWriter(str(logdir))

    def on_interval(done, loss, acc, lr):  # what runner._train_epochs logs
        writer.add_scalar("train/loss", loss, done)
        writer.add_scalar("train/acc", acc, done)
        writer.add_scalar("train/lr", lr, done)

    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    batches = tensor_batches(x, y, batch, steps, generator, augment)  # what TensorData.train_batches returns
    train_epoch(model, optimizer, lr_at, 0, batches, steps, 1, cfg.log.every_steps, on_interval)
    seconds = time.perf_counter() - start
    writer.close()
    return seconds


def minimal_epoch(cfg, x, y, batch) -> float:
    model, _ = fresh_model(cfg)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=scaled_lr(cfg, batch), momentum=0.9, weight_decay=5e-4)
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    order = torch.randperm(x.shape[0], generator=generator)
    for step in range(x.shape[0] // batch):
        index = order[step * batch:(step + 1) * batch]
        loss = F.cross_entropy(model(x[index]), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def dataloader_epoch(cfg, root: Path, batch, workers, subset) -> float:
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.2860,), (0.3530,))])
    dataset = datasets.FashionMNIST(str(root), train=True, transform=transform, download=False)
    if subset is not None:
        dataset = torch.utils.data.Subset(dataset, subset.tolist())
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                                         drop_last=True, persistent_workers=False)
    model, _ = fresh_model(cfg)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=scaled_lr(cfg, batch), momentum=0.9, weight_decay=5e-4)
    start = time.perf_counter()
    for inputs, targets in loader:
        loss = F.cross_entropy(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def torchvision_root(tmp: Path) -> Path:
    """torchvision wants the uncompressed idx files under ROOT/FashionMNIST/raw (see shared NOTES)."""
    raw = tmp / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in DEBIAN_DIR.glob("*-ubyte.gz"):
        with gzip.open(gz) as src, open(raw / gz.name[:-3], "wb") as dst:
            shutil.copyfileobj(src, dst)
    return tmp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[256, 2])
    parser.add_argument("--small-batch-images", type=int, default=4000,
                        help="images per epoch for batches < 32 (a stratified subset), to keep the run short")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (d2l uses 4; this box has 2 cores)")
    parser.add_argument("--augment", action="store_true",
                        help="also time normbench with data.augment=true (crop with padding 4 + flip, on the device)")
    args = parser.parse_args()

    cfg = compose(["log.progress=none"])
    data = load_data(cfg.data, "cpu")
    augment = from_config(compose(["data.augment=true"]).data, black(cfg.data.mean, cfg.data.std), data.image_size)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, LeNet-BN (sigmoid, avg pool), "
          f"Fashion-MNIST from {data.source}")
    with tempfile.TemporaryDirectory() as tmp:
        root = torchvision_root(Path(tmp) / "data")
        rows = []
        for batch in args.batch:
            subset = None
            x, y = data.train_x, data.train_y
            if batch < 32 and args.small_batch_images < x.shape[0]:
                subset = stratified_subset(y, args.small_batch_images, seed=0)
                x, y = x[subset], y[subset]
            times = {"normbench": [], "minimal": [], "dataloader": []} | ({"augmented": []} if args.augment else {})
            warm = min(x.shape[0], 64 * batch)  # untimed warm-up: allocator, kernels, worker start-up
            normbench_epoch(cfg, x[:warm], y[:warm], batch, Path(tmp) / f"warm{batch}")
            minimal_epoch(cfg, x[:warm], y[:warm], batch)
            for repeat in range(args.repeats):
                times["normbench"].append(normbench_epoch(cfg, x, y, batch, Path(tmp) / f"tb{batch}-{repeat}"))
                times["minimal"].append(minimal_epoch(cfg, x, y, batch))
                times["dataloader"].append(dataloader_epoch(cfg, root, batch, args.workers, subset))
                if args.augment:
                    times["augmented"].append(normbench_epoch(cfg, x, y, batch, Path(tmp) / f"aug{batch}-{repeat}",
                                                              augment))
            med = {k: statistics.median(v) for k, v in times.items()}
            rows.append((batch, x.shape[0], med))
            print(f"batch {batch:>4} ({x.shape[0]} images/epoch, median of {args.repeats}): "
                  f"normbench {med['normbench']:.2f}s  minimal {med['minimal']:.2f}s  "
                  f"DataLoader({args.workers} workers) {med['dataloader']:.2f}s"
                  + (f"  normbench+augment {med['augmented']:.2f}s" if args.augment else ""), flush=True)
    print("\nratios (same process, interleaved):")
    for batch, images, med in rows:
        target = "<= 1.05" if batch >= 32 else "<= 1.10"
        print(f"  batch {batch:>4}: normbench / minimal = {med['normbench'] / med['minimal']:.3f} (target {target}); "
              f"DataLoader / normbench = {med['dataloader'] / med['normbench']:.2f}x (target >= 2.5 at batch 256)"
              + (f"; augmented / normbench = {med['augmented'] / med['normbench']:.3f}" if args.augment else ""))


if __name__ == "__main__":
    main()
