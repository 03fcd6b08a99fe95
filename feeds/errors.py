"""The error tree of the pipeline.

Every error a user can meet is a :class:`SpampotsError`: it carries what went wrong, where
(a file and line, a setting, a partner) and what to do about it. The CLI prints
``str(error)`` as one line and exits with ``error.exit_code``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class SpampotsError(Exception):
    """Root of every error the service reports to a person."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str = "", **context: object) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.context = context

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class ConfigurationError(SpampotsError):
    """A setting, a command-line argument or a configuration file is wrong."""

    exit_code = 2


class SettingError(ConfigurationError):
    def __init__(self, name: str, given: str, allowed: str) -> None:
        super().__init__(
            f"setting {name}: got {given!r}",
            hint=f"allowed: {allowed}",
            setting=name,
            given=given,
        )
        self.name = name


@dataclass(frozen=True)
class Problem:
    """One mistake found in a file staff edit, located by line."""

    path: str
    line: int
    what: str
    todo: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}; {self.todo}"


class PartnersFileError(ConfigurationError):
    """partners.yaml has one or more mistakes; each is a line-numbered :class:`Problem`."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        first = self.problems[0]
        more = len(self.problems) - 1
        suffix = f" (and {more} more: run 'spampots partners check')" if more else ""
        super().__init__(str(first) + suffix, path=first.path)

    def __str__(self) -> str:
        return self.message


class StoreError(SpampotsError):
    """The database cannot be reached, is not migrated, or refused an operation."""


class SigningKeyError(SpampotsError):
    """A signing key is missing, unreadable or in the wrong state."""


class UsageError(ConfigurationError):
    """The command line asks for something that cannot be done as given."""
