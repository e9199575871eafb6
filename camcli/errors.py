"""The exceptions camcli raises on purpose.

Every failure a user can cause is one of these, carrying a one-line message. Only the CLI turns
them into stderr text and exit codes; the library raises them so Python callers can catch them.
Every line camcli prints goes through :func:`printable` (file names may hold terminal escapes).
"""

from __future__ import annotations

import enum
import re

#: What a terminal acts on instead of showing: C0 and C1 controls (ESC starts the sequences
#: that retitle a window or clear the screen, CR and LF start forged lines), DEL, Unicode's
#: line separators and the bidirectional overrides that reorder what is shown.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` as one safe line: every control character written as an escape (``\\x1b``,
    ``\\x0a``, ``\\u202e``), so a file name can neither drive the terminal nor forge a line.
    The one place every line camcli prints goes through (and the audit's Markdown)."""
    return _CONTROL.sub(_escape, str(text))


def printable_lines(text: str) -> str:
    """:func:`printable` for each line of a text meant to span several (a traceback)."""
    return "\n".join(printable(line) for line in str(text).split("\n"))


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class ExitStatus(enum.IntEnum):
    OK = 0
    SOME_FAILED = 1
    USAGE = 2
    INTERRUPTED = 130


class CamcliError(Exception):
    """Base class: a failure with a message meant for the user."""

    exit_status = ExitStatus.USAGE


class UsageError(CamcliError):
    """The command as given cannot run (bad option, unknown model, missing weights...)."""


class UnknownNameError(UsageError):
    """A name (model, layer, class) did not resolve; the message lists close matches."""

    def __init__(self, kind: str, name: str, suggestions: list[str] | tuple[str, ...] = ()):
        self.kind, self.name, self.suggestions = kind, name, list(suggestions)
        message = f"unknown {kind} {name!r}"
        if self.suggestions:
            message += " — did you mean: " + ", ".join(self.suggestions) + "?"
        super().__init__(message)


class WeightsError(UsageError):
    """Model weights could not be obtained (offline download, missing or incompatible file)."""


class ClusterError(UsageError):
    """Ray could not start, or the cluster named could not be reached (``--engine ray``)."""


class InputError(CamcliError):
    """One input could not be processed; the batch goes on without it."""

    exit_status = ExitStatus.SOME_FAILED

    def __init__(self, path: str, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


class OutputsFullError(CamcliError):
    """Writes keep failing for lack of space (a full disk or quota, a file-size limit): the run
    stops instead of failing every remaining input the same way."""

    exit_status = ExitStatus.SOME_FAILED
