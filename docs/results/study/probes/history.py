"""Per-epoch history of the MABN start-up probes on ShuffleNet V2 x0.5 (batch 32, seed 0),
stopped after a few epochs: which start-up setting survives the switch to moving-average
statistics. Its output is history.md:
    python docs/results/study/probes/history.py > docs/results/study/probes/history.md
The runs (runs/*/record.json) came from these commands, each stopped (SIGTERM) after a few epochs
(S = experiment=shufflenet_study batch=32 seed=0):
    normbench sweep $S norm=bn
    normbench sweep $S norm=mabn norm.warmup_iters=39 norm.renorm_iters=39   # as commands.sh
    normbench run $S norm=mabn norm.warmup_iters=39 norm.renorm_iters=39 norm.center_weights=false
    normbench run $S norm=mabn norm.warmup_iters=39 norm.renorm_iters=189
    normbench run $S norm=mabn                                    # the official 100 / 1000
    normbench run $S norm=mabn norm.warmup_iters=39 norm.renorm_iters=39 lr=0.05   # and lr=0.025
"""

from __future__ import annotations

from pathlib import Path

from normbench.records import RunRecord

RUNS = Path(__file__).resolve().parent / "runs"


def main() -> None:
    records = [RunRecord.read(path) for path in sorted(RUNS.glob("*/record.json"))]
    epochs = max(len(record.history) for record in records)
    print("train loss / validation error (%) after each epoch; 39 SGD steps per epoch\n")
    print("| norm | lr | start-up (warm-up / renorm from, iterations) | centered convs | ", end="")
    print(" | ".join(f"epoch {e}" for e in range(1, epochs + 1)) + " |")
    print("|---" * (4 + epochs) + "|")
    for record in sorted(records, key=_label):
        norm, cells = record.config["norm"], []
        for entry in record.history:
            cells.append(f"{entry['train_loss']:.2f} / {entry['val_error']:.1f}")
        cells += ["–"] * (epochs - len(cells))
        start = (
            f"{norm['warmup_iters']} / {norm['renorm_iters']}" if norm["name"] == "mabn" else "–"
        )
        centered = str(norm.get("center_weights", "–")).lower()
        lr = f"{record.config['lr']:g}"
        print(f"| {norm['name']} | {lr} | {start} | {centered} | " + " | ".join(cells) + " |")


def _label(record: RunRecord) -> tuple:
    norm = record.config["norm"]
    centered = norm.get("center_weights", False)
    return (norm["name"], -record.config["lr"], norm.get("renorm_iters", 0), not centered)


if __name__ == "__main__":
    main()
