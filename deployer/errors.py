"""Every expected failure is a ``DeployerError``; the CLI turns one into a single line and its exit code."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """What a ``deployer`` command's exit status means."""

    OK = 0
    #: the test step ran and a check failed
    TEST_FAILED = 1
    #: bad input: usage, repository or target validation, unknown name or target
    USAGE = 2
    #: a deploy (or the server/runtime it needs) failed; what was created is recorded
    DEPLOY_FAILED = 3
    #: teardown could not remove or verify everything; run it again
    TEARDOWN_INCOMPLETE = 4
    #: a part the command needs is not installed or not reachable
    UNAVAILABLE = 5
    #: an unexpected error (a bug): the traceback is printed
    INTERNAL = 70
    #: Ctrl-C / SIGTERM
    INTERRUPTED = 130


class DeployerError(Exception):
    """An expected failure. ``str(err)`` is one line that says what to do next."""

    exit_code: ExitCode = ExitCode.USAGE

    def __init__(self, message: str, *, hint: str | None = None, details: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        #: context for people (e.g. the server's last log lines), printed after the line
        self.details = details

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(DeployerError):
    exit_code = ExitCode.USAGE


class ValidationError(UsageError):
    """A repository or target rule is broken; ``path``/``line`` point at the cause when known."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 hint: str | None = None, details: str | None = None):
        where = f"{path}:{line}: " if path and line else (f"{path}: " if path else "")
        super().__init__(where + message, hint=hint, details=details)
        self.path = path
        self.line = line


class NotFound(UsageError):
    pass


class AlreadyDeployed(UsageError):
    pass


class Unavailable(DeployerError):
    exit_code = ExitCode.UNAVAILABLE


class DeployFailed(DeployerError):
    exit_code = ExitCode.DEPLOY_FAILED


class TeardownIncomplete(DeployerError):
    exit_code = ExitCode.TEARDOWN_INCOMPLETE


class Interrupted(DeployerError):
    exit_code = ExitCode.INTERRUPTED
