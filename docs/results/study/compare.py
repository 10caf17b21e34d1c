"""The GN-paper comparison of the converged study, computed from its committed records.

Prints Markdown (docs/results/study/comparison.md is this script's output; a test checks it):
    python docs/results/study/compare.py > docs/results/study/comparison.md
Every number is a difference of cell means (over seeds) of the main grid: lr as in the preset,
36 epochs, norms after the convolutions only; "± x" is one standard error of the difference (cells
with 2 or more seeds). The metric is the GN paper's, the median test error of the last 5 epochs,
except where a line names EMA, population (precise) or batch statistics. The lr-fairness section
picks each norm's lr on validation (best_val_error) and compares ranks by the same test metric.
"""

from __future__ import annotations

import contextlib
import math
import sys
from pathlib import Path

from normbench.errors import UserError
from normbench.study.tables import build_table
from normbench.study.where import parse_where

RUNS = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "runs"
MAIN = parse_where(["lr=0.1", "epochs=36", "backbone.fc_norm=false"])
CONTRAST = parse_where(["lr=0.1", "epochs=36", "backbone.fc_norm=true"])
SHUFFLENET = parse_where(["backbone.name=shufflenet_v2", "lr=0.1", "epochs=36"])
PAPER = "median5_test_error"
PROTOCOL_LR = 0.1
LR_FACTORS = (0.5, 1.0, 2.0)  # x the protocol's lr, seed 0 (docs/results/study/commands.sh lr)
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
    cell = table.cells_by_metric[PAPER]
    lines = {
        f"BN({small}) - BN({large})": (("bn", small), ("bn", large)),
        f"GN({large}) - BN({large})": (("gn", large), ("bn", large)),
        f"MABN({small}) - BN({large})": (("mabn", small), ("bn", large)),
    }
    for label, (a, b) in lines.items():
        mean(*a), mean(*b)  # SystemExit naming a missing cell
        print(f"| {label} | {_difference(cell[a], cell[b])} | {PUBLISHED.get(label, '')} |")
    print("\nEach norm's spread across batch sizes (largest minus smallest cell mean, points):\n")
    print("| norm | spread | worst batch | best batch | published spread |")
    print("|---|---|---|---|---|")
    for norm in table.rows:
        values = {batch: mean(norm, batch) for batch in batches}
        worst, best = max(values, key=values.get), min(values, key=values.get)
        spread = values[worst] - values[best]
        print(f"| {norm} | {spread:.2f} | {worst} | {best} | {PUBLISHED_SPREAD.get(norm, '')} |")
    print(_precise_share("the main grid", mean, small, large))
    with contextlib.suppress(UserError):  # UserError: the contrast's records are not in (yet)
        contrast = build_table(RUNS, METRICS, where=CONTRAST)
        print(_precise_share("the fc-normalized contrast", _means(contrast), small, large))
    _lr_fairness(large, small)
    _shufflenet(small, large)


def _shufflenet(small: int, large: int) -> None:
    """The MABN-on-ShuffleNet V2 question (experiment=shufflenet_study): MABN and GN against BN."""
    try:
        table = build_table(RUNS, METRICS, where=SHUFFLENET)
    except UserError:  # no ShuffleNet record yet
        print("\nShuffleNet V2: no run records yet.")
        return
    cell = table.cells_by_metric[PAPER]
    seeds = sorted({c.n for c in cell.values() if c.n})
    print(
        f"\nShuffleNet V2 x0.5 (experiment=shufflenet_study), {table.n_runs} run records ", end=""
    )
    print(f"({_seeds(seeds)}), the main metric:\n")
    print("| difference (points) | here |\n|---|---|")
    pairs = {
        f"MABN({small}) - BN({small})": (("mabn", small), ("bn", small)),
        f"GN({small}) - BN({small})": (("gn", small), ("bn", small)),
        f"BN({small}) - BN({large})": (("bn", small), ("bn", large)),
        f"MABN({small}) - BN({large})": (("mabn", small), ("bn", large)),
        f"MABN({large}) - BN({large})": (("mabn", large), ("bn", large)),
        f"GN({large}) - BN({large})": (("gn", large), ("bn", large)),
    }
    for label, (a, b) in pairs.items():
        have = all(cell.get(key) and cell[key].n for key in (a, b))
        print(f"| {label} | {_difference(cell[a], cell[b]) if have else 'not run yet'} |")
    ema = table.cells_by_metric["test_error"]
    if all(ema.get(("bn", batch)) and ema[("bn", batch)].n for batch in (small, large)):
        print(_precise_share("ShuffleNet V2", _means(table), small, large))


def _difference(a, b) -> str:
    """a - b of two cells' means, with one standard error when both have 2 or more seeds."""
    text = f"{a.mean - b.mean:+.2f}"
    if a.n < 2 or b.n < 2:
        return text
    return text + f" ± {math.sqrt(a.std**2 / a.n + b.std**2 / b.n):.2f}"


def _lr_fairness(*batches: int) -> None:
    """Per batch: each norm's lr chosen on validation, and the norms' ranks by the main metric at
    the protocol's lr and at each norm's own chosen lr (seed 0)."""
    lrs = [PROTOCOL_LR * factor for factor in LR_FACTORS]
    factors = ", ".join(f"{factor:g}" for factor in LR_FACTORS)
    print(
        f"\nlr fairness, seed 0: lr x {{{factors}}} of the protocol's, chosen on validation ",
        end="",
    )
    print("(best_val_error); rank 1 is the lowest test error (the main metric).")
    spread = build_table(RUNS, PAPER, where=MAIN).cells_by_metric[PAPER]
    for batch in batches:
        where = parse_where(["epochs=36", "backbone.fc_norm=false", "seed=0", f"batch={batch}"])
        table = build_table(RUNS, f"best_val_error,{PAPER}", cols="lr", where=where)
        val, test = table.cells_by_metric["best_val_error"], table.cells_by_metric[PAPER]
        done = [n for n in table.rows if all(val.get((n, lr)) and val[(n, lr)].n for lr in lrs)]
        pending = [n for n in table.rows if n not in done]
        chosen = {n: min(lrs, key=lambda lr, n=n: val[(n, lr)].mean) for n in done}
        at_protocol = _ranks({n: test[(n, PROTOCOL_LR)].mean for n in done})
        at_own = _ranks({n: test[(n, chosen[n])].mean for n in done})
        print(f"\nAt {batch} images per device ({len(done)} norms with all three lrs):\n")
        print(f"| norm | chosen lr | test error at {PROTOCOL_LR:g} | at chosen lr | ", end="")
        print(f"rank at {PROTOCOL_LR:g} | at chosen lr |\n|---|---|---|---|---|---|")
        for n in sorted(done, key=at_protocol.get):
            protocol, own = test[(n, PROTOCOL_LR)].mean, test[(n, chosen[n])].mean
            print(f"| {n} | {chosen[n]:g} | {protocol:.2f} | {own:.2f} | ", end="")
            print(f"{at_protocol[n]} | {at_own[n]} |")
        moved = [
            f"{n} {at_protocol[n]} -> {at_own[n]}" for n in done if at_protocol[n] != at_own[n]
        ]
        print(f"\nRanks that change: {', '.join(moved) or 'none'}.", end="")
        print(f" Not run yet: {', '.join(pending)}." if pending else "")
        stds = sorted(c.std for (_, b), c in spread.items() if b == batch and c.std is not None)
        if stds:
            median = stds[len(stds) // 2]
            print(f"For scale, the main grid's median seed std at {batch}: {median:.2f}.")


def _ranks(values: dict[str, float]) -> dict[str, int]:
    return {n: rank for rank, n in enumerate(sorted(values, key=values.get), start=1)}


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
