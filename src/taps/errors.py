"""One exception type for every user-facing problem.

The CLI prints a `TapsError` as a single line (what is wrong and how to fix it) instead of a
traceback, so every check on user input raises this and nothing else.
"""


class TapsError(Exception):
    """A problem the user can fix: the message names the problem and the fix."""
