"""Exceptions of the reporter, each naming the object that failed and what to do next."""

from __future__ import annotations


class ReporterError(Exception):
    """A failure the reporter handles: the CLI prints it as `Error: …` and exits non-zero."""

    # Whether running the same command again may succeed without a change by the operator.
    transient = False


class StoreError(ReporterError):
    """The store cannot be opened or read."""

    def __init__(self, message: str, *, store_url: str, transient: bool = False) -> None:
        super().__init__(message)
        self.store_url = store_url
        self.transient = transient


class OutputError(ReporterError):
    """The report files cannot be written or moved into place."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class LockedError(ReporterError):
    """Another nightly run holds the lock on the output directory."""

    transient = True

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path
