"""The error types the CLI knows: each one is printed as ``error: …`` (no traceback) with a distinct exit code."""

from __future__ import annotations


class DataGenError(Exception):
    """A problem the user can fix (bad config, bad input file, refused API key): exit status 2."""


class ConfigError(DataGenError):
    """A config key or flag is unknown, missing or of the wrong type; the message names it."""


class InputError(DataGenError):
    """An input file is unreadable or a row is invalid; the message names the file and line."""


class FatalAPIError(DataGenError):
    """The API refused every request (bad key, no access): retrying or continuing would only fail again."""


class BudgetExhausted(Exception):
    """The next paid request could take the total spend past ``--budget``; the run stops cleanly instead."""


class RequestFailed(Exception):
    """One API request failed for good (retries used up, or an error that retrying cannot fix)."""


class RowFailed(Exception):
    """A row cannot be completed (e.g. no valid answer within ``max_tries``); the reason is recorded."""

