"""The one error type for bad input, and the wrapper that turns it into exit code 2."""
import functools
import sys

USAGE_EXIT_CODE = 2


class UsageError(Exception):
    """Bad input from the user: the message names the problem and the fix."""


def exits_on_usage_error(main):
    """Wrap a script's `main(args)`: a UsageError prints one line `error: ...` and exits with code 2."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UsageError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(USAGE_EXIT_CODE)
    return wrapper
