"""The conventions of every ``python -m megaportraits_export`` subcommand, the same as the SDK's
``megaportraits`` command, so a user meets one behaviour on both sides:

* a failure the user can cause (a missing file, a bad config, a checkpoint of another
  architecture, an SDK refusal, an export that does not match PyTorch) prints one line,
  ``megaportraits_export: error: ...``, and exits 1, without a traceback;
* a usage error (an unknown option, a missing argument) prints one line too, with where to look
  for help, and exits 2, as argparse does;
* Ctrl-C exits 130.

A subcommand module provides ``build_parser()`` (a :func:`parser`) and ``main(argv) -> int``
that returns :func:`run` of its body; the dispatcher (``__main__``) lists every such module.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from megaportraits.errors import MegaportraitsError

PROG = "megaportraits_export"

# Errors of the export side's own modules that a user can cause. They are matched only when
# their module has been imported (otherwise they cannot have been raised), so catching them
# does not import torch into a command that never needed it.
_USER_ERRORS = {
    "megaportraits_export.checkpoint": "CheckpointError",
    "megaportraits_export.training.config": "ConfigError",
    "megaportraits_export.onnx_export.errors": "ExportError",
}


class CommandError(Exception):
    """A failure the user caused and can fix; the message says what is wrong and what to do."""


class Parser(argparse.ArgumentParser):
    """Usage errors in one line, with the program's name and where to look for help."""

    def error(self, message):
        self.exit(2, f"{PROG}: error: {message} (see {self.prog} --help)\n")


def parser(command: str, description: str, **kwargs) -> Parser:
    """The argument parser of one subcommand."""
    return Parser(prog=f"python -m {PROG} {command}", description=description, **kwargs)


def user_error_types() -> tuple:
    """The exception types that mean "the user can fix this": one line and exit 1."""
    types = [CommandError, MegaportraitsError]
    for module_name, name in _USER_ERRORS.items():
        module = sys.modules.get(module_name)
        if module is not None:
            types.append(getattr(module, name))
    return tuple(types)


def run(body: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """``body(args)``'s exit status, with every user-caused failure turned into one line."""
    try:
        return body(args) or 0
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print(f"{PROG}: error: out of memory; use a smaller model, batch or input", file=sys.stderr)
        return 1
    except OSError as e:
        where = f": {e.filename!r}" if getattr(e, "filename", None) else ""
        print(f"{PROG}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    except Exception as e:
        if not isinstance(e, user_error_types()):
            raise
        from megaportraits.sessions import one_line  # imported late: it loads onnxruntime

        print(f"{PROG}: error: {one_line(e) or type(e).__name__}", file=sys.stderr)
        return 1
