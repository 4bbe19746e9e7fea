"""Errors a user can cause with corpus input. Each names the file and the problem."""

from pathlib import Path


class CorpusError(Exception):
    """Base class of every corpus-building error a user can cause."""


class InputFileError(CorpusError):
    """One input file (audio, transcript, listing) is unusable.

    ``path`` is the offending file, ``problem`` says what is wrong and, where it helps, what to do.
    A build records these per file in its summary (``skipped``) and goes on with the others.
    """

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class SourceError(CorpusError):
    """The corpus source as a whole is unusable (missing folder, unknown format, bad options)."""
