"""The error types and exit statuses of data_gen: each error is printed as ``error: …`` (no traceback).

Exit statuses (``run_stage`` returns them; the ``run`` pipeline stops at the first 2 or 3 and continues past 4):
"""

from __future__ import annotations

EXIT_DONE = 0  #: every row is done
EXIT_USAGE = 2  #: usage / config / input / auth error, or the output is locked by another run
EXIT_RESUMABLE = 3  #: stopped early; rerunning the same command continues (budget, batch job running, outage)
EXIT_FAILED_ROWS = 4  #: finished, but some rows failed (count and top reasons in the summary)


class DataGenError(Exception):
    """A problem the user can fix (bad config, bad input file, refused API key): exit status 2."""


class ConfigError(DataGenError):
    """A config key or flag is unknown, missing or of the wrong type; the message names it."""


class InputError(DataGenError):
    """An input file is unreadable or a row is invalid; the message names the file and line."""


class FatalAPIError(DataGenError):
    """The API refused every request (bad key, no access): retrying or continuing would only fail again."""


class OutputLocked(DataGenError):
    """Another run holds the lock on this output; two writers would pay for every row twice."""


class ServerUnreachable(Exception):
    """The server could not be reached for a while (refused, DNS, TLS, timeouts, 429/5xx that outlast the
    retries): the stage stops, the rows stay pending, exit status 3, and a rerun continues."""


class BudgetExhausted(Exception):
    """The next paid request could take the total spend past ``--budget``; the run stops cleanly instead."""


class RequestFailed(Exception):
    """One API request failed for good with an error that retrying cannot fix (a 4xx such as 400)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status, when the server answered


class RowFailed(Exception):
    """A row cannot be completed (e.g. no valid answer within ``max_tries``); the reason is recorded."""



#: Shorter "secrets" are not redacted: a local server takes any key, and masking a one-character key would mask
#: that character in every message (``Une***pected fields``). A real API key is far longer.
MIN_SECRET_CHARS = 8


def redact(text: str, secrets: set[str]) -> str:
    """``text`` with every secret of at least :data:`MIN_SECRET_CHARS` characters replaced by ``***``."""
    for secret in secrets:
        if len(secret) >= MIN_SECRET_CHARS:
            text = text.replace(secret, "***")
    return text
