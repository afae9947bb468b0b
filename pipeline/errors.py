"""One exception hierarchy. Every error carries its context and its exit code.

Errors survive pickling (they cross from worker processes to the parent), so each keeps its
constructor arguments in ``self.args``-independent fields and rebuilds itself in ``__reduce__``.
Only ``pipeline.cli`` turns these into exit codes and messages.
"""

from __future__ import annotations

EX_OK = 0
EX_FAILURE = 1
EX_USAGE = 2
EX_DATAERR = 65
EX_IOERR = 74
EX_TEMPFAIL = 75
EX_CONFIG = 78
EX_SIGINT = 130
EX_SIGTERM = 143


class PipelineError(Exception):
    """Base of every error the program reports on purpose."""

    exit_code = EX_FAILURE

    def __init__(self, message: str, **context):
        super().__init__(message)
        self.message = message
        self.context = {k: v for k, v in context.items() if v is not None}

    def __reduce__(self):
        return (_rebuild, (self.__class__, self.message, self.context))

    def __str__(self) -> str:
        return self.message


def _rebuild(cls, message, context):
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.message = message
    err.context = context
    return err


class ConfigError(PipelineError):
    """The job file is invalid. The message names the file, the YAML line and the key path."""

    exit_code = EX_CONFIG

    def __init__(self, message: str, *, file=None, line=None, key=None, **context):
        super().__init__(message, file=file, line=line, key=key, **context)

    def __str__(self) -> str:
        where = []
        if self.context.get("file"):
            where.append(str(self.context["file"]))
        if self.context.get("line"):
            where.append(f"line {self.context['line']}")
        prefix = " ".join(where)
        key = self.context.get("key")
        if key:
            prefix = f"{prefix}: {key}" if prefix else key
        return f"{prefix}: {self.message}" if prefix else self.message


class ExprError(ConfigError):
    """An expression does not parse, names an unknown function, or an unknown column."""


class InputError(PipelineError):
    """Input data errors beyond what the job allows: unreadable file, bad rows over the limit."""

    exit_code = EX_DATAERR


class StageError(PipelineError):
    """A stage failed on a chunk (for example a user ``python`` stage raised)."""

    exit_code = EX_FAILURE


class OutputError(PipelineError):
    """The output cannot be written (disk full, permission denied). Nothing is published."""

    exit_code = EX_IOERR


class LockedError(PipelineError):
    """Another run of the same job holds its lock."""

    exit_code = EX_TEMPFAIL


class Interrupted(PipelineError):
    """The run was stopped by SIGINT or SIGTERM. Nothing is published."""

    def __init__(self, message: str, *, signum: int = 2, **context):
        super().__init__(message, signum=signum, **context)

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        return 128 + int(self.context.get("signum", 2))
