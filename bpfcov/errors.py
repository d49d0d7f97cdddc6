"""The one exception type bpfcov raises for problems a user can act on.

The CLI turns it into a single `bpfcov: error: ...` line and exit status 1; anything
else escaping is a bug and is shown as one too, with the traceback kept for --debug.
"""


class BpfcovError(Exception):
    """A problem with the user's input or machine, explained in one line."""

    exit_status = 1


class NoFunctionsError(BpfcovError):
    """An ELF object with no function symbols to probe (stripped, no debug file found)."""


class UsageError(BpfcovError):
    """Options that do not fit together."""

    exit_status = 2
