"""Paths the user hands us: inputs that must be readable, outputs written all-or-nothing.

An output is written to a hidden temporary file in the destination's own directory (so the
final rename is atomic on one filesystem) and moved into place only when complete; on an error
the temporary file is removed, so a failed run never leaves a half-written file behind.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import InputError


def check_readable_file(path: str | os.PathLike, what: str) -> Path:
    """A regular, non-empty file that can be opened, or an :class:`InputError` saying which not."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} {str(path)!r} does not exist")
    if not path.is_file():
        raise InputError(f"{what} {str(path)!r} is not a file")
    if not os.access(path, os.R_OK):
        raise InputError(f"{what} {str(path)!r} cannot be read (permission denied)")
    if path.stat().st_size == 0:
        raise InputError(f"{what} {str(path)!r} is empty")
    return path


def check_output_path(path: str | os.PathLike, suffixes: tuple[str, ...] | None = None) -> Path:
    """The destination's directory exists and is writable, and the name has a usable suffix."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"output {str(path)!r} is a directory; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"output directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"output directory {str(parent)!r} is not writable")
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise InputError(f"output {str(path)!r} must end in {' or '.join(suffixes)}")
    return path


def temporary_sibling(path: Path) -> Path:
    """A fresh hidden file beside ``path`` with the same suffix (encoders pick formats by it)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".",
                               prefix=f".{path.stem}.", suffix=f".partial{path.suffix}")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the result should look like any new file
    return Path(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_output(path: str | os.PathLike):
    """Yield a temporary path; move it onto ``path`` on success, delete it on any error."""
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
