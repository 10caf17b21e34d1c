"""`normbench bench`: loop overhead, per-norm train-step cost on ResNet-18 and folded-BN eval
latency, measured in one process (repetitions interleaved, medians), printed side by side with the
targets of the issue and the machine they come from, and optionally written as JSON so the README's
numbers trace to a file."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import did_you_mean
from ..errors import UserError
from .report import print_fold, print_loop, print_machine, print_norms

SECTIONS = ("loop", "norms", "fold")


@dataclass
class Sizes:
    """How much each section measures; `quick` sizes finish in seconds (tests), the ratios are then
    rough."""

    loop_batches: list[int] = field(default_factory=lambda: [256, 2])
    # None: all 60,000
    loop_images: dict[int, int | None] = field(default_factory=lambda: {256: None, 2: 4000})
    loop_repeats: int = 3
    norm_batch: int = 16
    image_size: int = 32
    norm_repeats: int = 9
    fold_backbones: list[str] = field(default_factory=lambda: ["lenet", "resnet20", "resnet18"])
    fold_batches: list[int] = field(default_factory=lambda: [1, 32])
    fold_repeats: int = 30


QUICK = Sizes(
    loop_images={256: 1024, 2: 128},
    loop_repeats=1,
    norm_batch=4,
    image_size=16,
    norm_repeats=2,
    fold_backbones=["lenet", "resnet18"],
    fold_batches=[1, 8],
    fold_repeats=3,
)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UserError(
                f"--device {name} but no CUDA GPU is visible to torch: use --device cpu or auto"
            )
        return torch.device(name)
    raise UserError(f"--device must be auto, cpu or cuda (or cuda:N), got {name!r}")


def parse_list(
    text: str | None, allowed: tuple[str, ...] | list[str], option: str
) -> list[str] | None:
    """A comma list of names from `allowed` (None: not given); one UserError line for an unknown
    name."""
    if text is None:
        return None
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise UserError(f"{option} needs at least one name: e.g. {option} {allowed[0]}")
    for name in names:
        if name not in allowed:
            raise UserError(
                f"{option}: unknown name {name!r}{did_you_mean(name, allowed)}; "
                f"choose from {', '.join(allowed)}"
            )
    return names


def fast_overrides(amp: bool, channels_last: bool, compile_mode: str | None) -> list[str]:
    """The fast-path config overrides the norms section applies to every model."""
    modes = {
        "default": "true",
        "reduce-overhead": "reduce-overhead",
        "max-autotune": "max-autotune",
    }
    overrides = (["amp=true"] if amp else []) + (["channels_last=true"] if channels_last else [])
    if compile_mode is not None:
        if compile_mode not in modes:
            raise UserError(f"--compile must be one of {', '.join(modes)}, got {compile_mode!r}")
        overrides.append(f"compile={modes[compile_mode]}")
    return overrides


def machine(device: torch.device) -> dict[str, Any]:
    """Where the numbers come from; the load average says whether other processes shared the CPU."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "load_average_start": list(os.getloadavg()),
        "gpu": None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def run_bench(
    device_name: str = "auto",
    quick: bool = False,
    only: str | None = None,
    norms: str | None = None,
    out: Path | None = None,
    threads: int | None = None,
    repeats: int | None = None,
    norm_batch: int | None = None,
    image_size: int | None = None,
    fast: list[str] | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the chosen sections, print them as they finish, return (and write to `out`) every
    measurement."""
    from ..files import write_json
    from ..norms import NORMS
    from .fold import bench_fold
    from .loop import bench_loop
    from .norms import bench_norms

    sections = parse_list(only, SECTIONS, "--only") or list(SECTIONS)
    norm_names = parse_list(norms, list(NORMS), "--norms") or list(NORMS)
    for option, value in (
        ("--threads", threads),
        ("--repeats", repeats),
        ("--norm-batch", norm_batch),
        ("--image-size", image_size),
    ):
        if value is not None and value < 1:
            raise UserError(f"{option} must be >= 1, got {value}")
    if norm_batch == 1 and "norms" in sections:
        raise UserError(
            "--norm-batch must be >= 2: BN and the other batch norms need two images per batch"
        )
    if image_size is not None and image_size < 9:
        raise UserError(f"--image-size must be >= 9 (ResNet-18's small stem), got {image_size}")
    device = resolve_device(device_name)
    if threads is not None:
        torch.set_num_threads(threads)
    sizes = QUICK if quick else Sizes()
    n_loop, n_norm, n_fold = (
        (repeats,) * 3 if repeats else (sizes.loop_repeats, sizes.norm_repeats, sizes.fold_repeats)
    )
    results: dict[str, Any] = {"machine": machine(device), "quick": quick}
    print_machine(results["machine"], echo)
    started = time.perf_counter()
    if "loop" in sections:
        results["loop"] = bench_loop(device, sizes.loop_batches, sizes.loop_images, n_loop)
        print_loop(results["loop"], echo)
    if "norms" in sections:
        results["norms"] = bench_norms(
            device,
            norm_names,
            norm_batch or sizes.norm_batch,
            image_size or sizes.image_size,
            n_norm,
            fast or [],
        )
        print_norms(results["norms"], echo)
    if "fold" in sections:
        results["fold"] = bench_fold(device, sizes.fold_backbones, sizes.fold_batches, n_fold)
        print_fold(results["fold"], echo)
    results["machine"]["load_average_end"] = list(os.getloadavg())
    results["seconds"] = time.perf_counter() - started
    echo(
        "\nload average (1, 5, 15 min) at start "
        f"{_loads(results['machine']['load_average_start'])}, at end "
        f"{_loads(results['machine']['load_average_end'])} on "
        f"{results['machine']['cpu_count']} CPUs "
        f"(a load at the start means other processes were using the CPU: timings are then noisy); "
        f"{results['seconds']:.0f} s in all"
    )
    if out is not None:
        write_json(Path(out), results)
        echo(f"wrote {out}")
    return results


def _loads(values: list[float]) -> str:
    return "/".join(f"{v:.2f}" for v in values)
