"""User-facing errors of the engines package.

Every failure a user can fix (a bundle copied half-way, a plan built for another GPU, a
backend that is not installed, audio of the wrong shape) becomes one of these, so the CLI and
the daemon print one sentence that names the thing and the fix instead of a traceback.
"""

from __future__ import annotations

from edge_asd.core.errors import UserError


class BundleError(UserError):
    """A bundle directory that is missing, incomplete, tampered with or of an unknown schema."""


class ExportError(UserError):
    """An ONNX export that cannot be produced or that fails its own checks."""


class EngineBuildError(UserError):
    """A TensorRT engine that cannot be built, loaded or that does not match this device."""


class BackendUnavailableError(UserError):
    """An inference backend whose native libraries are not installed on this machine."""


class InputError(UserError):
    """Audio handed to a runtime that is not float32 (B, 160000) finite samples."""


__all__ = ["BackendUnavailableError", "BundleError", "EngineBuildError", "ExportError", "InputError"]
