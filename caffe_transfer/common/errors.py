"""The one exception type the library raises for bad input or a broken environment.

The CLI turns it into a one-line message and a non-zero exit in exactly one place, so every
message must name the bad value and say what was expected.
"""


class CaffeTransferError(Exception):
    """A user-facing error: one line, naming the bad value and what was valid."""
