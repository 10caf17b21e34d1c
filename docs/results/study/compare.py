"""The GN-paper comparison of the converged study, computed from its committed records.

Prints Markdown (docs/results/study/comparison.md is this script's output; a test checks it):
    python docs/results/study/compare.py > docs/results/study/comparison.md
Every number is a difference of cell means (over seeds) of the main grid: lr as in the preset,
36 epochs, norms after the convolutions only. The metric is the GN paper's, the median test error
of the last 5 epochs, except where a line names EMA, population (precise) or batch statistics.
"""

from __future__ import annotations

import sys
from pathlib import Path

from normbench.errors import UserError
from normbench.study.tables import build_table
from normbench.study.where import parse_where

RUNS = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "runs"
MAIN = parse_where(["lr=0.1", "epochs=36", "backbone.fc_norm=false"])
CONTRAST = parse_where(["lr=0.1", "epochs=36", "backbone.fc_norm=true"])
PAPER = "median5_test_error"
METRICS = f"{PAPER},test_error,test_error_precise,test_error_batch"
MEANINGFUL_GAP = 1.0  # points: below it, BN's small-batch gap is within a few seeds' spread
# the paper's Table 2 and the MABN paper (ResNet-50, ImageNet): the same differences
PUBLISHED = {
    "BN(2) - BN(32)": "+11.1 (34.7 - 23.6)",
    "GN(32) - BN(32)": "+0.5",
    "MABN(2) - BN(32)": "+0.26 (23.67 - 23.41, MABN paper)",
}
PUBLISHED_SPREAD = {  # largest - smallest error over 32...2 images per GPU
    "bn": "11.1 (GN paper)",
    "gn": "0.2 (GN paper)",
    "sn": "1.3 (SN README, accuracy)",
    "mabn": "~0.2 (MABN paper, figure)",
}


def main() -> None:
    table = build_table(RUNS, METRICS, where=MAIN)
    batches = sorted(table.cols, reverse=True)
    small, large = min(batches), max(batches)
    mean = _means(table)
    seeds = sorted({cell.n for cell in table.cells_by_metric[PAPER].values()})
    print(f"From {table.n_runs} run records under docs/results/study/runs ({_seeds(seeds)}).\n")
    print("| difference (points) | here | published (ResNet-50, ImageNet) |")
    print("|---|---|---|")
    lines = {
        f"BN({small}) - BN({large})": mean("bn", small) - mean("bn", large),
        f"GN({large}) - BN({large})": mean("gn", large) - mean("bn", large),
        f"MABN({small}) - BN({large})": mean("mabn", small) - mean("bn", large),
    }
    for label, value in lines.items():
        print(f"| {label} | {value:+.2f} | {PUBLISHED.get(label, '')} |")
    print("\nEach norm's spread across batch sizes (largest minus smallest cell mean, points):\n")
    print("| norm | spread | worst batch | best batch | published spread |")
    print("|---|---|---|---|---|")
    for norm in table.rows:
        values = {batch: mean(norm, batch) for batch in batches}
        worst, best = max(values, key=values.get), min(values, key=values.get)
        spread = values[worst] - values[best]
        print(f"| {norm} | {spread:.2f} | {worst} | {best} | {PUBLISHED_SPREAD.get(norm, '')} |")
    print(_precise_share("the main grid", mean, small, large))
    try:
        contrast = build_table(RUNS, METRICS, where=CONTRAST)
    except UserError:  # the contrast's records are not in (yet)
        return
    print(_precise_share("the fc-normalized contrast", _means(contrast), small, large))


def _means(table):
    """mean(norm, batch, metric) of a table's cells; SystemExit when a cell has no run."""

    def mean(norm: str, batch: int, metric: str = PAPER) -> float:
        cell = table.cells_by_metric[metric].get((norm, batch))
        if cell is None or not cell.n:
            raise SystemExit(f"no completed runs of {norm} at batch {batch} under {RUNS}")
        return cell.mean

    return mean


def _precise_share(label: str, mean, small: int, large: int) -> str:
    """How much of BN's small-batch gap (last epoch, EMA statistics) population statistics close."""
    ema = mean("bn", small, "test_error") - mean("bn", large, "test_error")
    precise = mean("bn", small, "test_error_precise") - mean("bn", large, "test_error_precise")
    batch = mean("bn", small, "test_error_batch") - mean("bn", large, "test_error_batch")
    text = (
        f"\nIn {label}, BN at {small} minus BN at {large}, last epoch: {ema:+.2f} points with EMA "
        f"running statistics, {precise:+.2f} with population (precise) statistics, {batch:+.2f} "
        "with the test batch's own statistics: "
    )
    if ema < MEANINGFUL_GAP:
        return text + f"no gap (< {MEANINGFUL_GAP:g} point) for population statistics to remove."
    return (
        text + f"population statistics remove {(ema - precise) / ema * 100:.0f} % of the EMA gap."
    )


def _seeds(counts: list[int]) -> str:
    return (
        f"{counts[0]} seed{'s' if counts[0] > 1 else ''} per cell"
        if len(counts) == 1
        else (f"{min(counts)}-{max(counts)} seeds per cell")
    )


if __name__ == "__main__":
    main()
    sys.stdout.flush()
