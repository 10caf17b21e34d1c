"""Eval latency with eval-mode norms folded into the preceding conv/linear vs unfolded, per backbone, on this
machine (CPU by default). One process; folded and unfolded timed interleaved; median ms per forward.

    python scripts/bench_fuse.py                          # lenet and resnet18 with BN
    python scripts/bench_fuse.py --backbones lenet resnet20 resnet50 --norm bn --batch 64
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from normbench.backbones import build_model
from normbench.config import compose
from normbench.fuse import fold_norms


@torch.inference_mode()
def forward_ms(model, x, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        if x.is_cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["lenet", "resnet18"])
    parser.add_argument("--norm", default="bn")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32, help="for backbones other than lenet (lenet: 28)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, norm={args.norm}, "
          f"batch {args.batch}")
    for backbone in args.backbones:
        size, channels = (28, 1) if backbone == "lenet" else (args.image_size, 3)
        cfg = compose([f"backbone={backbone}", f"norm={args.norm}", f"data.image_size={size}",
                       f"data.in_channels={channels}"])
        torch.manual_seed(0)
        model, _ = build_model(cfg)
        model = model.to(args.device).eval()
        folded, count = fold_norms(model)
        x = torch.randn(args.batch, channels, size, size, device=args.device)
        with torch.inference_mode():
            error = (folded(x) - model(x)).abs().max().item()
        forward_ms(model, x, 5), forward_ms(folded, x, 5)  # warm-up
        plain, fused = [], []
        for _ in range(args.repeats):  # interleaved so drift hits both alike
            plain += forward_ms(model, x, 1)
            fused += forward_ms(folded, x, 1)
        p, f = statistics.median(plain), statistics.median(fused)
        print(f"{backbone:<14} {count:>3} norms folded  unfolded {p:8.2f} ms  folded {f:8.2f} ms  "
              f"speed-up {p / f:.2f}x  max |diff| {error:.1e}")


if __name__ == "__main__":
    main()
