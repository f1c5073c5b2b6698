"""The one exception type that reaches the user as a single line, and the exit codes.

Exit codes (README, docs/CLI_JSON.md): 0 success; 1 a check found problems (verify, diff, check,
status); 2 usage (bad options, arguments or configuration values); 3 a runtime failure (anything
else). A check-type command returns PROBLEMS_FOUND from run(); everything else that fails raises.
"""

OK = 0
PROBLEMS_FOUND = 1  # the command ran; what it checked is not as it should be
USAGE = 2
FAILURE = 3


class PgtapeError(Exception):
    """A problem the user can act on. The CLI prints `pgtape: <message>` and exits with exit_code.

    The message says what is wrong and how to fix it; never raise this with a traceback in mind.
    """

    exit_code = FAILURE


class UsageError(PgtapeError):
    """Bad option, argument or configuration value (exit 2, like argparse)."""

    exit_code = USAGE


class ProblemsFound(PgtapeError):
    """A check-type command (verify) met damage it can only name in one line: exit 1, not 3."""

    exit_code = PROBLEMS_FOUND
