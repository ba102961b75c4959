"""Error types. Every user-facing failure is a QconfError; the CLI turns it into exit code 2."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the user's input: where it is, what was found, what to do."""

    where: str
    what: str
    fix: str = ""

    def __str__(self) -> str:
        text = f"{self.where}: {self.what}" if self.where else self.what
        return f"{text} — {self.fix}" if self.fix else text


class QconfError(Exception):
    """Base class of every error qconf reports to a user (exit code 2 on the command line)."""

    def __init__(self, problems: list[Problem] | Problem | str) -> None:
        if isinstance(problems, str):
            problems = [Problem("", problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    @property
    def lines(self) -> list[str]:
        return [str(p) for p in self.problems]


class PlanError(QconfError, ValueError):
    """The plan (config, overrides) is wrong. Lists every problem found in one pass."""


class BackendUnavailableError(QconfError, ImportError):
    """A backend the plan needs is not installed or cannot run on this hardware."""


class ModelSourceError(QconfError, FileNotFoundError):
    """The model source cannot be read (missing folder, not in the local cache, offline)."""


class OutOfMemory(QconfError, RuntimeError):
    """On the command line: the plan did not fit this machine's memory while loading or
    generating (see qconf.loading.out_of_memory; the Python API raises torch's own error)."""
