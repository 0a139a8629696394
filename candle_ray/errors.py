"""Errors with one-line, actionable messages and the exit code the CLI gives them.

Exit codes: 1 = the work failed (data, download, training), 2 = bad usage (a wrong file, key or value).
"""


def data_row(index) -> str:
    """A row of a data file as every message names it: counted from 1, a header line not counted (0-based
    `index` 3 is "data row 4", the 5th line of a CSV with a header)."""
    return f"data row {int(index) + 1}"


class CandleRayError(Exception):
    """A failure of the work: exit code 1. The message says what is wrong and what to do."""

    exit_code = 1


class UsageError(CandleRayError):
    """Bad input from the user (experiment file, --set, options): exit code 2."""

    exit_code = 2


class DataError(CandleRayError):
    """Data that cannot be used: unreadable, non-finite, labels out of range, shape mismatch."""


class DownloadError(DataError):
    """A source that cannot be fetched."""


class ChecksumError(DataError):
    """A downloaded or cached file whose checksum does not match the recorded one."""


class CacheError(DataError):
    """A missing or corrupt cache entry; the message names the command that rebuilds it."""


class CheckpointError(CandleRayError):
    """A checkpoint that is missing, corrupt or does not match its model."""


class TrainingError(CandleRayError):
    """A training run that failed (after its retries)."""
