"""Problems a user can fix (bad config, bad data, bad model folder), reported without a traceback."""

import sys


class UserError(ValueError):
    """Reported as a one-line message naming the key or file and what to do, not a traceback."""


class DataError(UserError):
    """A problem with the input data, naming the file, folder or key and what to do."""


def warn(message: str) -> None:
    """Tell the user about something the run works around, in one line on stderr."""
    print(f"imgcls warning: {message}", file=sys.stderr, flush=True)
