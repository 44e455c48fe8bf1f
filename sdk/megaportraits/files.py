"""Paths the user hands us: inputs that must be readable, outputs written all-or-nothing.

One guard for every output, used by the CLI and the Python API alike
(:func:`check_output_path`): the directory must exist and be writable, the name must leave room
for the temporary name, and the output may never be one of the inputs, however it is spelled
(symlinks, ``..``, hard links). It runs before any work is done. An existing output file that is
not an input is replaced, as ``cp`` and ``ffmpeg -y`` do; the CLI says so on stderr.

An output is written to a hidden temporary file in the destination's own directory (so the
final rename is atomic on one filesystem) and moved into place only when complete; on an error
(a full disk included: one :class:`MegaportraitsError`, not an ``OSError``) the temporary file is
removed, so a failed run never leaves a half-written file behind.

One signal policy (:func:`deferred_signals`): SIGINT, SIGTERM and SIGHUP (Ctrl-C, ``timeout``,
``docker stop``, CI cancellation, a closed terminal) are turned into a flag while an output is
being written; the writer stops at a safe point, finishes what is done as a valid file, and
only then is the stop reported (:class:`megaportraits.errors.AnimationInterrupted` for videos).
Outside such a block, the CLI makes SIGTERM and SIGHUP raise like Ctrl-C (:func:`signals_raise`),
so a command stopped while loading a model unwinds and says so.
"""
from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Mapping

from .errors import InputError, MegaportraitsError

#: what :func:`temporary_sibling` adds to a name: ".", ".", 8 random characters, ".partial"
TEMPORARY_NAME_EXTRA = 1 + 1 + 8 + len(".partial")
#: the signals that stop a job at a safe point (those that exist on this platform)
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


def check_readable_file(path: str | os.PathLike, what: str) -> Path:
    """A regular, non-empty file that can be opened, or an :class:`InputError` saying which not."""
    path = Path(path)
    try:
        path.stat()
    except FileNotFoundError:
        pass
    except OSError as e:  # a name too long, a loop of symlinks, a component that is a file
        raise InputError(f"{what} {_short(path)} cannot be opened: {e.strerror or e}") from None
    if not path.exists():
        raise InputError(f"{what} {str(path)!r} does not exist")
    if not path.is_file():
        raise InputError(f"{what} {str(path)!r} is not a file")
    if not os.access(path, os.R_OK):
        raise InputError(f"{what} {str(path)!r} cannot be read (permission denied)")
    if path.stat().st_size == 0:
        raise InputError(f"{what} {str(path)!r} is empty")
    return path


def check_output_path(path: str | os.PathLike, suffixes: tuple[str, ...] | None = None,
                      inputs: Mapping[str, str | os.PathLike | None] | None = None) -> Path:
    """The guard every output passes before any work: the directory exists and is writable,
    the name has a usable suffix and is short enough for the temporary name beside it, and it
    is none of ``inputs`` (``{"driver video": path, ...}``; None values are skipped)."""
    path = Path(path)
    if str(path) == "" or path.name in ("", ".", ".."):
        raise InputError(f"output {str(path)!r} is not a file name")
    if len(os.fsencode(path)) >= _PATH_MAX:
        raise InputError(f"output {_short(path)} is {len(os.fsencode(path))} bytes long, more than a path may be "
                         f"({_PATH_MAX - 1}); choose a shorter name")
    parent = path.parent if str(path.parent) else Path(".")
    limit = _name_max(parent)
    length = len(os.fsencode(path.name))
    if length + TEMPORARY_NAME_EXTRA > limit:
        raise InputError(f"output file name is {length} bytes long; this directory allows "
                         f"{limit - TEMPORARY_NAME_EXTRA} (the temporary file beside it needs "
                         f"{TEMPORARY_NAME_EXTRA} more); choose a shorter name")
    try:
        path.stat()
    except FileNotFoundError:
        pass
    except OSError as e:
        raise InputError(f"output {_short(path)} cannot be used: {e.strerror or e}") from None
    if path.is_dir():
        raise InputError(f"output {str(path)!r} is a directory; give a file name")
    if not parent.is_dir():
        raise InputError(f"output directory {str(parent)!r} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"output directory {str(parent)!r} is not writable")
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise InputError(f"output {str(path)!r} has the extension {path.suffix or '(none)'!r}; "
                         f"it must end in {', '.join(suffixes)}")
    for what, source in (inputs or {}).items():
        if source is not None and same_file(path, source):
            raise InputError(f"the output {str(path)!r} would overwrite the {what} {str(source)!r}; "
                             "choose another output name")
    return path


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file: after resolving symlinks and ``..``, or as hard links."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


_PATH_MAX = 4096


def _short(path: Path, keep: int = 80) -> str:
    """A path for a one-line message: quoted, and shortened in the middle when very long."""
    text = repr(str(path))
    return text if len(text) <= 2 * keep else f"{text[:keep]}...{text[-keep:]}"


def _name_max(directory: Path) -> int:
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


def temporary_sibling(path: Path) -> Path:
    """A fresh hidden file beside ``path`` with the same suffix (encoders pick formats by it)."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".",
                                   prefix=f".{path.stem}.", suffix=f".partial{path.suffix}")
    except OSError as e:
        raise write_failed(path, e) from None
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the result should look like any new file
    return Path(tmp)


def write_failed(path: str | os.PathLike, error: OSError) -> MegaportraitsError:
    """An operating-system error while writing ``path`` (a full disk, a quota, a vanished
    directory) as one line that names the file."""
    reason = error.strerror or " ".join(str(error).split())[:200] or type(error).__name__
    return MegaportraitsError(f"cannot write {str(path)!r}: {reason}; nothing was written")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_output(path: str | os.PathLike):
    """Yield a temporary path; move it onto ``path`` on success, delete it on any error.
    Signals that stop the job wait until the file is in place or gone."""
    path = Path(path)
    with deferred_signals():
        tmp = temporary_sibling(path)
        try:
            yield tmp
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise write_failed(path, e) from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


class StopRequest:
    """What :func:`deferred_signals` yields: ``signum`` is the first stop signal received, or
    None; ``bool(request)`` says whether one was."""

    def __init__(self):
        self.signum: int | None = None
        self.handled = False  # the block acted on the signal: do not deliver it again

    def __bool__(self) -> bool:
        return self.signum is not None

    def _catch(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum


@contextlib.contextmanager
def deferred_signals(redeliver: bool = True):
    """While the block runs, SIGINT, SIGTERM and SIGHUP only set a flag (the yielded
    :class:`StopRequest`); the block checks it at safe points. On leaving, the previous
    handlers are restored and, with ``redeliver``, a signal the block did not act on is
    delivered again, so it still stops the program the way it would have.

    A KeyboardInterrupt raised wherever a signal happens to land (inside PyAV's or ONNX
    Runtime's callbacks, say) can be swallowed there, and SIGTERM would kill the process with
    a temporary file left behind; a flag stops the work at a frame boundary instead. Off the
    main thread signal handlers cannot be set, so the block runs unprotected there; a signal
    the process ignores (``nohup``: SIGHUP) stays ignored. Nested uses share the outer one.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {}
    for signum in STOP_SIGNALS:
        current = signal.getsignal(signum)
        if current is signal.SIG_IGN or getattr(current, "__self__", None).__class__ is StopRequest:
            continue  # ignored on purpose, or an outer block already defers it
        previous[signum] = signal.signal(signum, request._catch)
    try:
        yield request
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if redeliver and request.signum is not None and not request.handled:
            signal.raise_signal(request.signum)


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP outside a :func:`deferred_signals` block, raised the way Python
    raises KeyboardInterrupt for SIGINT; ``signum`` says which."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum


def _raise_stopped(signum, frame):
    raise Stopped(signum)


@contextlib.contextmanager
def signals_raise():
    """While the block runs, SIGTERM and SIGHUP raise :class:`Stopped` (a KeyboardInterrupt)
    as SIGINT already raises KeyboardInterrupt, so a command stopped while it loads a model
    or reads its inputs unwinds (and says so) instead of dying where it stands; inside, a
    :func:`deferred_signals` block still turns all three into a flag. Only handlers left at
    their default are replaced, only on the main thread, and they are restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for signum in STOP_SIGNALS:
        if signum != signal.SIGINT and signal.getsignal(signum) is signal.SIG_DFL:
            previous[signum] = signal.signal(signum, _raise_stopped)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
