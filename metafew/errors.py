"""User-facing errors and the exit codes the CLI maps them to.

Library code raises these with a message that says what was wrong, which value, and how to fix
it; `metafew.cli` prints the message as one line and exits with the class's `exit_code`.
"""

from __future__ import annotations


class MetafewError(Exception):
    """Base class of every error a user can cause and fix."""

    exit_code = 1


class ConfigError(MetafewError):
    """A config file, key or value is invalid (exit code 2, like a usage error)."""

    exit_code = 2


class DataError(MetafewError):
    """A dataset, folder or image cannot be used (exit code 3)."""

    exit_code = 3


class RunError(MetafewError):
    """A run folder or checkpoint is missing, corrupt, unsafe or claimed by another process, or
    cannot be written (full disk, read-only folder) (exit code 4)."""

    exit_code = 4


class DivergedError(MetafewError):
    """Training produced a non-finite loss; no checkpoint was overwritten (exit code 5)."""

    exit_code = 5


class Interrupted(MetafewError):
    """A command was interrupted (Ctrl-C, SIGTERM, SIGUSR1): training after checkpointing its last
    completed iteration, eval/finetune/predict before writing anything (exit code 130)."""

    exit_code = 130


EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "internal error (a bug: please report it with the traceback)",
    2: "invalid command line, config file, key or value (also a changed config on --resume)",
    3: "dataset problem: missing folder, too few classes or images, unreadable or oversized pictures",
    4: "run folder or checkpoint missing, corrupt, unsafe or busy; disk full or run folder not writable",
    5: "training diverged (non-finite loss or gradient); checkpoints were left untouched",
    130: (
        "interrupted by SIGINT, SIGTERM or SIGUSR1: train checkpointed its last completed iteration "
        "(if any); eval, finetune and predict wrote nothing; sweep passed the signal to its running "
        "points and recorded them (continue with --resume)"
    ),
}
