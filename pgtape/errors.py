"""The one exception type that reaches the user as a single line."""


class PgtapeError(Exception):
    """A problem the user can act on. The CLI prints `pgtape: <message>` and exits non-zero.

    The message says what is wrong and how to fix it; never raise this with a traceback in mind.
    """

    exit_code = 1


class UsageError(PgtapeError):
    """Bad option or argument (exit 2, like argparse)."""

    exit_code = 2
