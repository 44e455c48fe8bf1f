"""The errors the SDK raises on purpose, each with a one-line message that says what to do.

Everything a user can get wrong (a file, a bundle, a provider, a photo without a face) raises a
:class:`MegaportraitsError`; the CLI prints its message as ``megaportraits: error: ...`` and
exits non-zero without a traceback. Anything else escaping the SDK is a bug.

This module imports nothing else from the SDK, so every module (the manifest included) may
import it.
"""
from __future__ import annotations


class MegaportraitsError(Exception):
    """Base of every error the SDK raises about its inputs or environment."""


class InputError(MegaportraitsError):
    """An image or video the caller passed is missing, unreadable, empty or unusable."""


class NoFaceError(InputError):
    """No face was found where one is needed (the source, or the driver's first frame)."""


class BundleError(MegaportraitsError, ValueError):
    """A model bundle is missing, malformed, tampered with, or incompatible with this SDK.

    The one bundle error: ``megaportraits.manifest.BundleError`` is this class. A ValueError
    too, as the manifest's error always was, so older ``except ValueError`` code keeps working.
    """


class ProviderError(MegaportraitsError):
    """The requested ONNX Runtime execution provider is unknown or not available here."""


class CustomOpError(MegaportraitsError):
    """The native custom-op library cannot be found, or ONNX Runtime refused to load it."""


class PortableFallbackWarning(RuntimeWarning):
    """The custom-op library could not be loaded; the bundle's portable graphs are used."""


class AnimationInterrupted(KeyboardInterrupt):
    """Ctrl-C while writing a video: the frames done were saved as a valid, playable file.

    A :class:`KeyboardInterrupt`, so a caller that does not care still stops as usual.
    """

    def __init__(self, frames_written: int, path):
        super().__init__(f"interrupted: wrote {frames_written} frame(s) to {path}" if path is not None
                         else "interrupted before any frame was written; no output file was made")
        self.frames_written = frames_written
        self.path = path
