"""Several `normbench run`s in one torchrun launch (tests/test_devices_runs.py): each process runs
every run in turn, so the launch and the imports are paid once, not once per run.

Usage: torchrun --nproc_per_node=N tests/torchrun_runs.py OUT 'override override ...' ...
(one argument per run: its overrides, space-separated; every run writes under OUT).
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from normbench import runner
from normbench.config import compose


def main(out: str, runs: list[str]) -> None:
    torch.set_num_threads(1)  # N processes on few cores: no oversubscription
    # one process group for all runs (each run's session uses it and leaves it alone): a group
    # destroyed and made again under one torchrun rendezvous can hang
    dist.init_process_group("gloo")
    try:
        for text in runs:
            overrides = [*text.split(), f"out={out}"]
            cfg, choices = compose(overrides, with_choices=True)
            runner.run(cfg, choices, overrides)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
