"""Printing the bench's measurements: one block per section, ratios next to their targets (PASS /
MISS)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Echo = Callable[[str], None]


def verdict(ok: bool | None) -> str:
    return "" if ok is None else ("PASS" if ok else "MISS")


def print_machine(info: dict[str, Any], echo: Echo) -> None:
    gpu = (
        f"; GPU {info['gpu']} (CUDA {info.get('cuda')}, cuDNN {info.get('cudnn')})"
        if info["gpu"]
        else "; no GPU used"
    )
    omp = f", OMP_NUM_THREADS={info['omp_num_threads']}" if info["omp_num_threads"] else ""
    echo(
        f"machine: {info['cpu']}, {info['cpu_count']} CPUs, torch {info['torch']} with "
        f"{info['torch_threads']} threads{omp}{gpu}; device {info['device']}; load average at "
        f"start {loads(info['load_average_start'])}"
    )


def print_load(results: dict[str, Any], echo: Echo) -> None:
    """The closing line: load averages at start and end (noisy timings if the CPU was shared)."""
    info = results["machine"]
    echo(
        f"\nload average (1, 5, 15 min) at start {loads(info['load_average_start'])}, at end "
        f"{loads(info['load_average_end'])} on {info['cpu_count']} CPUs (a load at the start "
        "means other processes were using the CPU: timings are then noisy); "
        f"{results['seconds']:.0f} s in all"
    )


def loads(values: list[float]) -> str:
    """Load averages as 1/5/15-minute values, two decimals each."""
    return "/".join(f"{v:.2f}" for v in values)


def print_loop(result: dict[str, Any], echo: Echo) -> None:
    echo(
        f"\n== loop overhead: one training epoch, {result['model']}; {result['data']}; "
        "DataLoader with "
        f"{result['dataloader_workers']} workers; median of {result['repeats']} interleaved epochs"
    )
    echo(
        f"{'batch':>5} {'images':>7} {'normbench':>10} {'minimal':>9} {'DataLoader':>11}   "
        f"{'normbench/minimal (wall, CPU)':<38} {'DataLoader/normbench':<22}"
    )
    for row in result["rows"]:
        sec = row["seconds"]
        over = (
            f"{row['normbench_over_minimal_wall']:.3f}, {row['normbench_over_minimal_cpu']:.3f} "
            f"(<= {row['target_over_minimal']:.2f} {verdict(row['pass_over_minimal'])})"
        )
        speed = f"{row['dataloader_over_normbench']:.2f}x"
        if "target_dataloader_over_normbench" in row:
            speed += (
                f" (>= {row['target_dataloader_over_normbench']} {verdict(row['pass_dataloader'])})"
            )
        echo(
            f"{row['batch']:>5} {row['images']:>7} {sec['normbench']:>9.2f}s "
            f"{sec['minimal']:>8.2f}s {sec['dataloader']:>10.2f}s   {over:<38} {speed:<22}"
        )
    judged = (
        "process CPU time"
        if result["rows"] and result["rows"][0]["judged_on"] == "cpu"
        else "wall time"
    )
    echo(
        f"seconds: wall clock per epoch; normbench/minimal judged on {judged}; "
        "DataLoader/normbench on wall time (the DataLoader works in other processes)"
    )


def print_norms(result: dict[str, Any], echo: Echo) -> None:
    fast = f"; fast path: {' '.join(result['fast_path'])}" if result["fast_path"] else ""
    echo(
        f"\n== train step per norm: {result['model']}, forward + backward + SGD{fast}; median of "
        f"{result['repeats']} steps, all models interleaved; target <= "
        f"{result['target_over_bn']}x BN"
    )
    cuda = result["rows"][0]["peak_mb"] is not None
    echo(
        f"{'norm':<11} {'wall ms':>9} {'x BN':>6} {'CPU ms':>9} {'x BN':>6} {'':>4}  "
        f"{'saved MB':>9} {'x BN':>6}" + (f"  {'peak MB':>8} {'x BN':>6}" if cuda else "")
    )
    for row in result["rows"]:
        if "error" in row:
            echo(
                f"{row['norm']:<11} {'failed':>9} {'':>6} {'':>9} {'':>6} "
                f"{verdict(row['pass']):>4}  {row['error']}"
            )
            continue
        line = (
            f"{row['norm']:<11} {row['ms_per_step']:>9.2f} {row['over_bn_wall']:>6.2f} "
            f"{row['cpu_ms_per_step']:>9.2f} {row['over_bn_cpu']:>6.2f} "
            f"{verdict(row['pass']):>4}  {row['saved_mb']:>9.1f} {row['saved_over_bn']:>6.2f}"
        )
        if cuda:
            line += f"  {row['peak_mb']:>8.1f} {row['peak_over_bn']:>6.2f}"
        echo(line)
    judged = "process CPU time" if result["judged_on"] == "cpu" else "wall time"
    echo(
        f"PASS/MISS on {judged}; saved MB: distinct tensors autograd keeps for backward "
        "(activations, no parameters)"
        + (
            "; peak MB: CUDA peak allocated during a step above the allocation before it"
            if cuda
            else ""
        )
    )


def print_fold(result: dict[str, Any], echo: Echo) -> None:
    echo(
        "\n== eval latency, norms folded into the conv/linear before them (normbench.fuse) vs "
        f"not; median of {result['repeats']} interleaved forwards"
    )
    echo(
        f"{'backbone':<10} {'norm':<5} {'batch':>5} {'folded':>7} {'unfolded ms':>12} "
        f"{'folded ms':>10} {'speed-up':>9} {'max |diff|':>11}"
    )
    for row in result["rows"]:
        echo(
            f"{row['backbone']:<10} {row['norm']:<5} {row['batch']:>5} {row['norms_folded']:>7} "
            f"{row['unfolded_ms']:>12.3f} {row['folded_ms']:>10.3f} {row['speedup']:>8.2f}x "
            f"{row['max_abs_diff']:>11.1e}"
        )


def print_devices(result: dict[str, Any], echo: Echo) -> None:
    at = result["accum_target_at"]
    fast = f"; fast path: {' '.join(result['fast_path'])}" if result["fast_path"] else ""
    echo(
        "\n== simulated devices: images/s of a training step on the same b*W images: devices "
        "(batch=b devices=W, one forward, statistics per device), plain (batch=b*W devices=1, the "
        f"limit), accum (batch=b accum=W, W forwards){fast}; median of {result['repeats']} steps, "
        f"all interleaved; targets devices/plain >= {result['target_devices_over_plain']}, "
        f"devices/accum >= {result['target_devices_over_accum']} at b={at['batch']} "
        f"W={at['devices']} for {', '.join(result['accum_target_norms'])}"
    )
    for table in result["backbones"]:
        echo(f"-- {table['backbone']}, {table['input']} input")
        echo(
            f"{'norm':<11} {'b':>3} {'W':>3} {'devices':>9} {'plain':>9} {'accum':>9}   "
            f"{'devices/plain (wall)':<24} {'devices/accum (wall)':<24}"
        )
        for row in table["rows"]:
            cell = f"{row['norm']:<11} {row['batch']:>3} {row['devices']:>3}"
            if "error" in row:
                echo(f"{cell} {'failed':>9} {'':>19}   {verdict(row['pass'])}  {row['error']}")
                continue
            per_s = row["images_per_s"]
            over_plain = (
                f"{row['devices_over_plain']:.2f} ({row['devices_over_plain_wall']:.2f}) "
                f"{verdict(row['pass_over_plain'])}"
            )
            over_accum = (
                f"{row['devices_over_accum']:.2f} ({row['devices_over_accum_wall']:.2f}) "
                f"{verdict(row['pass_over_accum'])}"
            )
            echo(
                f"{cell} {per_s['devices']:>9.0f} {per_s['plain']:>9.0f} {per_s['accum']:>9.0f}   "
                f"{over_plain:<24} {over_accum:<24}"
            )
    judged = "process CPU time" if result["judged_on"] == "cpu" else "wall time"
    echo(f"images/s on wall time; ratios and PASS/MISS on {judged}, wall-time ratio in brackets")
