"""Terminal lines of commands above one run (sweeps) through `logging`: INFO lines to stdout,
warnings (failed, diverged, busy cells) to stderr, printed by the main process only."""

from __future__ import annotations

import logging
import os
import sys

ROOT = "normbench"  # modules log to logging.getLogger(__name__), below this logger


class TerminalHandler(logging.Handler):
    """Writes the bare message to sys.stdout, or sys.stderr from WARNING up. The stream is looked up
    at each line, not kept: tests (capsys) and forked children swap sys.stdout/sys.stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
        try:
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # logging's contract: a broken stream never stops the program
            self.handleError(record)


def main_process_only(record: logging.LogRecord) -> bool:
    """Under torchrun every process runs the same sweep and rank 0 reports. Read from torchrun's
    RANK (as normbench.distributed does outside a process group): this module stays torch-free."""
    return os.environ.get("RANK", "0").strip() in ("0", "")


def configure() -> None:
    """Install the terminal handler on the `normbench` logger once per process, and enable its
    loggers again: Hydra's launchers apply a logging config that disables every existing logger."""
    logger = logging.getLogger(ROOT)
    for name, other in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(other, logging.Logger) and (name == ROOT or name.startswith(f"{ROOT}.")):
            other.disabled = False
    if any(isinstance(handler, TerminalHandler) for handler in logger.handlers):
        return
    handler = TerminalHandler()
    handler.addFilter(main_process_only)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # the lines are the command's output, not log records to repeat
