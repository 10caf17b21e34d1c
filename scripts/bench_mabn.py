"""MABN vs BN train-step cost: forward + backward + SGD step, timed step by step with the models
interleaved in one process (each round runs one step of every model, in a rotating order), median
over the timed steps after an untimed warm-up. Prints milliseconds per step and the MABN / BN
ratios.

(a) LeNet as `normbench run` builds it: build_model(compose(["norm=mabn"])) (centred convs, 4 MABN
    layers, two of them on fc features) vs norm=bn, on 1x28x28 inputs at batch 2 and 32.
(b) A ResNet-sized stack of conv3x3 + norm + ReLU blocks (64 ch at 32x32, 128 and 256 ch at 16x16)
at
    batch 8, with centred convs for MABN (as build_model does) and, for reference, with plain convs.

MABN is timed in its most expensive phase (moving averages in both directions and a clipped r):
after the warm-up steps fill its ring buffers, the layers' iteration counters are moved past
max(renorm_iters, warmup_iters) through load_state_dict, i.e. exactly as a resumed run would
continue.

    python scripts/bench_mabn.py                  # both parts, torch's default thread count
    python scripts/bench_mabn.py --threads 1      # on a shared / loaded machine: see below
    python scripts/bench_mabn.py --steps 400 --part lenet

Target (issue): MABN <= 1.5x BN. On a busy 2-core VM, two intra-op threads per process make every
multi-threaded kernel wait for a descheduled partner, so step times swing by 5-10x and the ratios
mean little; --threads 1 measures the per-step work itself.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from normbench.backbones import build_model
from normbench.bench.norms import fast_forward
from normbench.bench.timing import interleaved
from normbench.config import compose
from normbench.norms import build_norm, convert_convs


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    model.train()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4, foreach=True
    )

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def time_interleaved(
    steps: dict[str, Callable[[], None]], warmup: int, timed: int, after_warmup: Callable[[], None]
) -> dict[str, float]:
    """Median seconds per step of each callable, interleaved step by step (normbench bench's
    timing)."""
    return interleaved(steps, timed, lambda: None, warmup=warmup, after_warmup=after_warmup).median(
        "wall"
    )


def lenet_models(norm: str) -> nn.Module:
    torch.manual_seed(0)
    model, _ = build_model(compose([f"norm={norm}", "log.progress=none"]))
    return model


class Stack(nn.Sequential):
    """conv3x3 + norm + ReLU blocks: 3->64 @32, 64->64 @32, 64->128 /2 @16, 128->128, 128->256,
    256->256."""

    PLAN = [(3, 64, 1), (64, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 1), (256, 256, 1)]

    def __init__(self, norm: str, center: bool) -> None:
        layers: list[nn.Module] = []
        for cin, cout, stride in self.PLAN:
            layers += [
                nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                build_norm(norm, cout),
                nn.ReLU(inplace=True),
            ]
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 10)]
        super().__init__(*layers)
        if center:
            convert_convs(self, "center")


def report(title: str, med: dict[str, float]) -> None:
    bn = med["bn"]
    parts = "  ".join(f"{name} {seconds * 1e3:.3f} ms" for name, seconds in med.items())
    ratios = "  ".join(
        f"{name}/bn = {seconds / bn:.2f}x" for name, seconds in med.items() if name != "bn"
    )
    print(f"{title}: {parts}\n    {ratios}  (target <= 1.5x)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["lenet", "stack", "both"], default="both")
    parser.add_argument("--steps", type=int, default=300, help="timed steps per model (LeNet)")
    parser.add_argument(
        "--stack-steps", type=int, default=30, help="timed steps per model (conv stack)"
    )
    parser.add_argument("--warmup", type=int, default=30, help="untimed steps per model first")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}; "
        f"median ms per train step (forward + backward + SGD), models interleaved",
        flush=True,
    )
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def synced(step: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            step()
            sync()

        return run

    if args.part in ("lenet", "both"):
        for batch in (2, 32):
            gen = torch.Generator().manual_seed(batch)
            x = torch.randn(batch, 1, 28, 28, generator=gen).to(device)
            y = torch.randint(0, 10, (batch,), generator=gen).to(device)
            models = {norm: lenet_models(norm).to(device) for norm in ("mabn", "bn")}
            steps = {norm: synced(make_step(model, x, y)) for norm, model in models.items()}
            med = time_interleaved(
                {"bn": steps["bn"], "mabn": steps["mabn"]},
                args.warmup,
                args.steps,
                lambda: fast_forward(models["mabn"]),
            )
            report(f"(a) LeNet batch {batch}", med)
    if args.part in ("stack", "both"):
        gen = torch.Generator().manual_seed(8)
        x = torch.randn(8, 3, 32, 32, generator=gen).to(device)
        y = torch.randint(0, 10, (8,), generator=gen).to(device)
        torch.manual_seed(0)
        models = {
            "bn": Stack("bn", center=False),
            "mabn": Stack("mabn", center=True),
            "mabn(plain convs)": Stack("mabn", center=False),
        }
        steps = {name: synced(make_step(model.to(device), x, y)) for name, model in models.items()}

        def forward_all() -> None:
            fast_forward(models["mabn"])
            fast_forward(models["mabn(plain convs)"])

        med = time_interleaved(steps, min(args.warmup, 10), args.stack_steps, forward_all)
        report("(b) conv3x3+norm+ReLU stack 64-256 ch, 32x32/16x16, batch 8", med)


if __name__ == "__main__":
    main()
