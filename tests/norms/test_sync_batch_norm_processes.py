"""SyncBN's CPU path (gloo) in two real processes against BN on the concatenated batch: outputs,
input and parameter gradients, running statistics and the eval-mode output after two steps.

Each attempt starts two fresh interpreters (this file run as a script), and is repeated: the
deprecated torch.distributed.nn all_reduce that SyncBN used before issue 17 made about half of such
two-process runs abort with SIGABRT after destroy_process_group, so a pass must not be luck.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

from normbench.norms.sync_batch_norm import SyncBatchNorm, all_reduce_sum

WORLD = 2
REPEATS = 4
CHANNELS = 3
# (dim, momentum, images per process): uneven batches check that the image count is summed too
CASES = [(2, 0.1, (4, 4)), (2, None, (5, 3)), (1, 0.1, (3, 6))]
STEPS = 2
DONE = "all cases equal BN on the whole batch"


def _batch(dim: int, images: int, seed: int) -> torch.Tensor:
    shape = (images, CHANNELS, 3, 2) if dim == 2 else (images, CHANNELS)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _layers(dim: int, momentum: float | None) -> tuple[SyncBatchNorm, nn.Module]:
    """A SyncBN layer and the BN it must equal, with the same non-trivial affine parameters."""
    bn = (nn.BatchNorm2d if dim == 2 else nn.BatchNorm1d)(CHANNELS, momentum=momentum)
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.5, 2.0, CHANNELS))
        bn.bias.copy_(torch.linspace(-1.0, 1.0, CHANNELS))
    synced = SyncBatchNorm(CHANNELS, momentum=momentum, dim=dim)
    synced.load_state_dict(bn.state_dict())
    return synced, bn


def check_case(rank: int, dim: int, momentum: float | None, split: tuple[int, int]) -> None:
    """This process's share of the batch through SyncBN == its rows of BN over the whole batch."""
    synced, bn = _layers(dim, momentum)
    assert synced.world_size == WORLD and "synchronised over 2 processes" in repr(synced)
    mine = slice(sum(split[:rank]), sum(split[: rank + 1]))
    for step in range(STEPS):
        whole = _batch(dim, sum(split), seed=10 * step + dim).requires_grad_()
        upstream = _batch(dim, sum(split), seed=10 * step + dim + 5)  # d loss / d output
        part = whole.detach()[mine].clone().requires_grad_()
        expected, out = bn(whole), synced(part)
        (expected * upstream).sum().backward()
        (out * upstream[mine]).sum().backward()
        torch.testing.assert_close(out, expected[mine], rtol=0, atol=1e-5)
        assert part.grad is not None and whole.grad is not None
        torch.testing.assert_close(part.grad, whole.grad[mine], rtol=0, atol=1e-5)
        for ours, theirs in ((synced.weight, bn.weight), (synced.bias, bn.bias)):
            assert ours.grad is not None and theirs.grad is not None
            # DDP sums (then averages) parameter gradients over processes; the sum is BN's
            summed = ours.grad.clone()
            dist.all_reduce(summed)
            torch.testing.assert_close(summed, theirs.grad, rtol=0, atol=1e-5)
    for name, value in bn.state_dict().items():
        torch.testing.assert_close(synced.state_dict()[name], value, rtol=0, atol=1e-6, msg=name)
    synced.eval(), bn.eval()
    probe = _batch(dim, 4, seed=99)
    torch.testing.assert_close(synced(probe), bn(probe), rtol=0, atol=1e-5)


def check_all_reduce_sum(rank: int) -> None:
    """The autograd Function alone: forward sums over processes, backward sums the gradients."""
    x = torch.tensor([1.0, 2.0]) * (rank + 1)
    x.requires_grad_()
    total = all_reduce_sum(x, dist.group.WORLD)
    assert total.tolist() == [3.0, 6.0]
    (total * (rank + 1)).sum().backward()  # upstream gradient 1 on rank 0, 2 on rank 1
    assert x.grad is not None and x.grad.tolist() == [3.0, 3.0]


def worker(rank: int, store: str) -> None:
    """One of the two processes: every case, then a clean shutdown (where the old code aborted)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        check_all_reduce_sum(rank)
        for dim, momentum, split in CASES:
            check_case(rank, dim, momentum, split)
        print(f"rank {rank}: {DONE}", flush=True)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("attempt", range(REPEATS))
def test_syncbn_in_two_processes_equals_bn_on_the_whole_batch(attempt, tmp_path):
    """Two processes, every case, exit code 0 for both (a SIGABRT at exit reads -6)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on two cores
    store = tmp_path / "store"  # a file rendezvous: no port to collide with other tests
    processes = [
        subprocess.Popen(
            [sys.executable, __file__, str(rank), str(store)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(WORLD)
    ]
    try:
        results = [process.communicate(timeout=180) for process in processes]
    finally:
        for process in processes:  # one hung or failed: leave no process behind
            if process.poll() is None:
                process.kill()
                process.wait()
    for rank, (process, (out, err)) in enumerate(zip(processes, results)):
        code = process.returncode
        assert code == 0 and f"rank {rank}: {DONE}" in out, (
            f"rank {rank}: exit {code}\n{err[-3000:]}"
        )
        assert "terminate called" not in err, err[-3000:]


if __name__ == "__main__":
    worker(int(sys.argv[1]), sys.argv[2])
