"""The error types a run stops with, and the wrapper that turns them into exit codes.

Exit codes: 2 for bad input (UsageError, as argparse), 3 for a run whose loss or gradient went
non-finite (TrainingDiverged); anything else is a bug and keeps its traceback (exit 1).
"""
import functools
import sys

USAGE_EXIT_CODE = 2
DIVERGED_EXIT_CODE = 3


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


def exits_on_usage_error(main):
    """Wrap a script's `main(args)`: a UsageError prints one line `error: ...` and exits with code 2,
    a TrainingDiverged one line `error: ...` and exits with code 3."""
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
    return wrapper
