"""`normbench bench`: loop overhead, per-norm train-step cost on ResNet-18, folded-BN eval latency
and the speed of simulated devices against a plain batch and gradient accumulation, measured in one
process (repetitions interleaved, medians), printed side by side with the targets of the issue and
the machine they come from, and optionally written as JSON so the README's numbers trace to a
file."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..distributed import resolve_device
from ..errors import UserError
from ..files import write_json
from ..norms import NORMS
from ..values import did_you_mean
from .devices import BACKBONES as DEVICE_BACKBONES
from .devices import DEVICE_NORMS, SHAPES, bench_devices
from .fold import bench_fold
from .loop import bench_loop
from .norms import bench_norms
from .report import (
    print_devices,
    print_fold,
    print_load,
    print_loop,
    print_machine,
    print_norms,
)

SECTIONS = ("loop", "norms", "fold", "devices")


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
    device_backbones: list[str] = field(default_factory=lambda: list(DEVICE_BACKBONES))
    device_shapes: list[tuple[int, int]] = field(default_factory=lambda: list(SHAPES))
    device_repeats: int = 31


QUICK = Sizes(
    loop_images={256: 1024, 2: 128},
    loop_repeats=1,
    norm_batch=4,
    image_size=16,
    norm_repeats=2,
    fold_backbones=["lenet", "resnet18"],
    fold_batches=[1, 8],
    fold_repeats=3,
    device_repeats=1,
)


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
    sections = parse_list(only, SECTIONS, "--only") or list(SECTIONS)
    chosen_norms = parse_list(norms, list(NORMS), "--norms")
    check_sizes(sections, threads, repeats, norm_batch, image_size)
    device = resolve_device(device_name, "--device")
    if threads is not None:
        torch.set_num_threads(threads)
    sizes = chosen_sizes(quick, repeats, norm_batch, image_size)
    results: dict[str, Any] = {"machine": machine(device), "quick": quick}
    print_machine(results["machine"], echo)
    started = time.perf_counter()
    run_sections(results, sections, device, sizes, chosen_norms, fast or [], echo)
    results["machine"]["load_average_end"] = list(os.getloadavg())
    results["seconds"] = time.perf_counter() - started
    print_load(results, echo)
    if out is not None:
        write_json(Path(out), results)
        echo(f"wrote {out}")
    return results


def chosen_sizes(
    quick: bool, repeats: int | None, norm_batch: int | None, image_size: int | None
) -> Sizes:
    """QUICK or the full sizes, with the command line's repeats, norm batch and image size."""
    sizes = QUICK if quick else Sizes()
    sizes = replace(
        sizes,
        norm_batch=norm_batch or sizes.norm_batch,
        image_size=image_size or sizes.image_size,
    )
    if repeats:
        sizes = replace(
            sizes,
            loop_repeats=repeats,
            norm_repeats=repeats,
            fold_repeats=repeats,
            device_repeats=repeats,
        )
    return sizes


def check_sizes(
    sections: list[str],
    threads: int | None,
    repeats: int | None,
    norm_batch: int | None,
    image_size: int | None,
) -> None:
    """One UserError line for a size option the bench cannot run with."""
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


def run_sections(
    results: dict[str, Any],
    sections: list[str],
    device: torch.device,
    sizes: Sizes,
    chosen_norms: list[str] | None,
    fast: list[str],
    echo: Callable[[str], None],
) -> None:
    """Measure each chosen section into `results` and print it as soon as it is done; `--norms`
    (`chosen_norms`, None when not given) picks the norms of the norms and devices sections."""
    if "loop" in sections:
        results["loop"] = bench_loop(
            device, sizes.loop_batches, sizes.loop_images, sizes.loop_repeats
        )
        print_loop(results["loop"], echo)
    if "norms" in sections:
        results["norms"] = bench_norms(
            device,
            chosen_norms or list(NORMS),
            sizes.norm_batch,
            sizes.image_size,
            sizes.norm_repeats,
            fast,
        )
        print_norms(results["norms"], echo)
    if "fold" in sections:
        results["fold"] = bench_fold(
            device, sizes.fold_backbones, sizes.fold_batches, sizes.fold_repeats
        )
        print_fold(results["fold"], echo)
    if "devices" in sections:
        results["devices"] = bench_devices(
            device,
            sizes.device_backbones,
            chosen_norms or list(DEVICE_NORMS),
            sizes.device_shapes,
            sizes.device_repeats,
            fast,
        )
        print_devices(results["devices"], echo)
