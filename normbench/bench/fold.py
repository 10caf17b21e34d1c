"""Eval latency with BN-like norms folded into the preceding conv/linear (normbench.fuse.fold_norms)
vs the model as trained, per backbone and batch; folded and unfolded forwards interleaved, median ms
per forward."""

from __future__ import annotations

from typing import Any

import torch

from ..backbones import build_model
from ..config import compose
from ..fuse import fold_norms
from .timing import interleaved, synchronizer


def bench_fold(
    device: torch.device,
    backbones: list[str],
    batches: list[int],
    repeats: int,
    norm: str = "bn",
    image_size: int = 32,
) -> dict[str, Any]:
    sync = synchronizer(device)
    rows = []
    for backbone in backbones:
        size, channels = (28, 1) if backbone == "lenet" else (image_size, 3)
        cfg = compose(
            [
                f"backbone={backbone}",
                f"norm={norm}",
                "data=synthetic",
                f"data.image_size={size}",
                f"data.in_channels={channels}",
                "log.progress=none",
            ]
        )
        torch.manual_seed(0)
        model = build_model(cfg)[0].to(device)
        model.train()
        # a few training forwards so the running statistics are not the init's 0 / 1
        with torch.no_grad():
            for _ in range(3):
                model(torch.randn(8, channels, size, size, device=device))
        model.eval()
        folded, count = fold_norms(model)
        for batch in batches:
            x = torch.randn(batch, channels, size, size, device=device)
            with torch.inference_mode():
                error = (folded(x) - model(x)).abs().max().item()

                def forward(m: torch.nn.Module, x: torch.Tensor = x) -> Any:
                    return lambda: m(x)

                times = interleaved(
                    {"unfolded": forward(model), "folded": forward(folded)}, repeats, sync, warmup=3
                )
            med, cpu = times.median("wall"), times.median("cpu")
            plain, fused = med["unfolded"] * 1e3, med["folded"] * 1e3
            rows.append(
                {
                    "backbone": backbone,
                    "norm": norm,
                    "batch": batch,
                    "norms_folded": count,
                    "unfolded_ms": plain,
                    "folded_ms": fused,
                    "speedup": plain / fused,
                    "speedup_cpu": cpu["unfolded"] / cpu["folded"],
                    "max_abs_diff": error,
                }
            )
    return {"repeats": repeats, "rows": rows}
