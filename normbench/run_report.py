"""What `normbench run` prints about a run: how it ended, or, after Ctrl-C, what was saved and what
rerunning the command does."""

from __future__ import annotations

from .records import Status
from .runner import RunResult
from .runs import CHECKPOINT, RunPlan, load_checkpoint

# the final metrics the closing line shows, where the record has them
SHOWN_ERRORS = ("test_error", "test_error_precise", "test_error_batch", "test_error_at_best_val")


def outcome_lines(result: RunResult) -> list[str]:
    """The closing line of a run: completed with its errors and time, skipped because it was done
    already, or the status it ended with."""
    record = result.record
    metrics = record.metrics
    if result.skipped and record.status is Status.DIVERGED:
        where = record.diverged_at or {}
        return [
            f"already diverged: {result.run_dir} (epoch {where.get('epoch')}, step "
            f"{where.get('step')}); --force trains it again"
        ]
    if result.skipped:
        return [
            f"already completed: {result.run_dir} (test_error {metrics.get('test_error'):.2f}%); "
            "--force trains it again"
        ]
    if record.status is Status.COMPLETED:
        errors = "  ".join(
            f"{name} {metrics[name]:.2f}%" for name in SHOWN_ERRORS if metrics.get(name) is not None
        )
        return [
            f"completed: {result.run_dir}  {errors}  test_acc {metrics['test_acc']:.4f}  "
            f"{record.timing['train_seconds']:.1f}s"
        ]
    return [f"{record.status.value}: {result.run_dir}"]


def interrupted_message(plan: RunPlan, force: bool) -> str:
    """After Ctrl-C: whether the run's checkpoint lets a rerun resume, and from where (the record
    already says "interrupted")."""
    checkpoint = plan.run_dir / CHECKPOINT
    saved = load_checkpoint(checkpoint) if checkpoint.is_file() else None
    if saved is None:
        return (
            "interrupted before the first checkpoint: no training was saved, so rerunning the "
            "command starts the run over"
        )
    state = saved.get("state") or {}
    epoch, position = state.get("epoch", 0), state.get("position")
    rerun = "rerun without --force to resume" if force else "rerun the same command to resume"
    if position:  # a mid-epoch checkpoint (checkpoint.every_minutes / every_steps)
        return (
            f"interrupted: {checkpoint} holds epoch {epoch + 1} of {plan.cfg.epochs} up to step "
            f"{position['done']}; {rerun} at that step"
        )
    return (
        f"interrupted: {checkpoint} holds epoch {epoch} of {plan.cfg.epochs}; {rerun} after "
        f"epoch {epoch}"
    )
