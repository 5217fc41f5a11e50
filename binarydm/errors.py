"""One error style for every entry point (``python -m binarydm.train|sample|export|fid``).

A user error (a bad argument or config value, a missing or unreadable file, an output path that
cannot be written) prints exactly one line, ``error: <what is wrong and how to fix it>``, to stderr
and exits with status 2. A run that fails on its own (training diverged) prints one line the same
way and exits with status 1. Anything else is a bug and keeps its traceback. Set
``BINARYDM_DEBUG=1`` to get the full traceback of a user error too.

This module imports nothing heavy: the error classes raised by other parts of binarydm are looked
up in ``sys.modules`` only (a class whose module was never imported cannot have been raised).
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Any, Callable, Optional, Sequence

DEBUG_ENV = "BINARYDM_DEBUG"


class BinarydmError(Exception):
    """Base of binarydm's own errors; ``exit_code`` is the status the entry points exit with."""

    exit_code = 1


class UsageError(BinarydmError, ValueError):
    """A user error: the message says what is wrong and how to fix it (one line). A ValueError too, so
    library callers that catch ValueError keep working."""

    exit_code = 2


class RunFailed(BinarydmError):
    """A run that stopped on its own (e.g. diverged): nothing was exported."""

    exit_code = 1


# Error classes of other modules that always carry a user-facing message (module, class name).
_USER_ERRORS = (
    ("binarydm.training.config", "ConfigError"),
    ("binarydm.datasets", "DatasetNotFoundError"),
    ("binarydm.training.teacher", "TeacherNotFoundError"),
    ("binarydm.packing.files", "PackedFormatError"),
    ("binarydm.evaluation.inception", "InceptionWeightsNotFound"),
    ("binarydm.evaluation.fid", "DatasetNotFound"),
)
# OSErrors about a path the user named: fixable by the user (status 2). Others (disk full, I/O
# error) are failures of the machine (status 1); both get one line.
_PATH_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.ENOENT,
                errno.EEXIST, errno.ENAMETOOLONG, errno.ELOOP}


def one_line(message: Any) -> str:
    """The message on one line (newlines and runs of spaces collapsed)."""
    return " ".join(str(message).split())


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def exit_code_of(err: BaseException) -> Optional[int]:
    """The exit status of an error a user can act on, or None for a bug (which keeps its traceback)."""
    if isinstance(err, BinarydmError):
        return err.exit_code
    for module, name in _USER_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(err, cls):
            return 2
    if isinstance(err, OSError) and (err.filename is not None or err.errno in (errno.ENOSPC, errno.EDQUOT)):
        return 2 if err.errno in _PATH_ERRNOS else 1
    return None


def message_of(err: BaseException) -> str:
    if isinstance(err, OSError) and not isinstance(err, BinarydmError) and err.filename is not None \
            and exit_code_of(err) is not None and type(err).__module__ == "builtins":
        # str(OSError) is "[Errno 13] Permission denied: 'x'": say what the path was for.
        what = err.strerror or type(err).__name__
        return f"{err.filename}: {what}; check the path and its permissions (or choose another output path)"
    return one_line(err) or type(err).__name__


class CLIExit(SystemExit):
    """SystemExit with the status in ``code`` (what the interpreter exits with) and the one-line message
    in ``str()`` (what a caller of ``main()`` in-process can match)."""

    def __init__(self, code: int, message: str):
        super().__init__(code)
        self.message = message

    def __str__(self) -> str:
        return self.message


def report(err: BaseException) -> Optional[int]:
    """Print ``error: ...`` for a user-actionable error and return its status; None for a bug."""
    code = exit_code_of(err)
    if code is None or debug_enabled():
        return None
    print(f"error: {message_of(err)}", file=sys.stderr)
    return code


def run_main(main: Callable[[list[str]], Any], argv: Optional[Sequence[str]], *, raise_exit: bool) -> Any:
    """Call an entry point's ``main(argv)`` under the error policy above.

    ``raise_exit``: raise :class:`CLIExit` (a SystemExit) with the status, as ``sample``, ``export``
    and ``fid`` always did; otherwise return the status (``train``'s ``main`` returns one).
    """
    from .console import quiet_third_party

    quiet_third_party()
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return main(args)
    except KeyboardInterrupt:
        if debug_enabled():
            raise
        print("error: interrupted", file=sys.stderr)
        if raise_exit:
            raise CLIExit(130, "interrupted") from None
        return 130
    except Exception as err:  # noqa: BLE001 - classified below; bugs are re-raised untouched
        code = report(err)
        if code is None:
            raise
        if raise_exit:
            raise CLIExit(code, message_of(err)) from None
        return code


__all__ = ["BinarydmError", "CLIExit", "DEBUG_ENV", "RunFailed", "UsageError", "debug_enabled", "exit_code_of",
           "message_of", "one_line", "report", "run_main"]
