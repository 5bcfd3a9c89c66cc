"""The error types a run stops with, and the wrapper that turns them into exit codes.

Exit codes: 2 for bad input (UsageError, as argparse), 3 for a run whose loss or gradient went
non-finite (TrainingDiverged), 128 + the signal number for a run stopped by SIGINT (130) or SIGTERM
(143) (TrainingInterrupted, or a Ctrl-C outside the loop); anything else is a bug and keeps its
traceback (exit 1).
"""
import functools
import signal
import sys

USAGE_EXIT_CODE = 2
DIVERGED_EXIT_CODE = 3
SIGNAL_EXIT_BASE = 128      # the shell's convention: a process ended by signal N exits with 128 + N


def first_line(error, default=None):
    """The first line of `error`'s message (library errors can run to pages), or `default`
    (the error's type name when None) where the message is empty."""
    text = str(error).strip()
    if text:
        return text.splitlines()[0]
    return type(error).__name__ if default is None else default


class UsageError(Exception):
    """Bad input from the user: the message names the problem and the fix."""


class TrainingDiverged(Exception):
    """The loss or gradient became inf or NaN: the message names the step, the algorithm and the loss parts."""


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped training after a step: the message says what was saved and how to resume."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.signum = signum


def exits_on_usage_error(main):
    """Wrap a script's `main(args)`: a UsageError prints one line `error: ...` and exits with code 2,
    a TrainingDiverged one line `error: ...` and exits with code 3, a TrainingInterrupted one line
    and 128 + the signal; a Ctrl-C elsewhere exits 130 without a traceback."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UsageError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(USAGE_EXIT_CODE)
        except TrainingDiverged as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(DIVERGED_EXIT_CODE)
        except TrainingInterrupted as e:
            print(f"stopped: {e}", file=sys.stderr)
            sys.exit(SIGNAL_EXIT_BASE + e.signum)
        except KeyboardInterrupt:
            print("stopped: interrupted (Ctrl-C); a half-written save is cleared at the next start", file=sys.stderr)
            sys.exit(SIGNAL_EXIT_BASE + signal.SIGINT)
    return wrapper
