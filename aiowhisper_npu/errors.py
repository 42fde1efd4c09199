"""Typed errors raised by aiowhisper_npu.

Every error the runtime raises on purpose derives from :class:`AiowhisperError`, so a caller can catch the
whole family in one place, or one kind precisely.
"""

from __future__ import annotations

__all__ = ["AiowhisperError", "AudioError", "ModelError", "BackendUnavailable", "DeviceError"]


class AiowhisperError(Exception):
    """Base class of every error raised by aiowhisper_npu."""


class AudioError(AiowhisperError, ValueError):
    """Audio input is unusable: empty, NaN/inf, wrong rank, wrong dtype, unreadable file."""


class ModelError(AiowhisperError):
    """A model is unknown, missing, truncated, corrupt or does not match its pinned checksum."""


class BackendUnavailable(AiowhisperError):
    """The requested backend cannot run here (e.g. ``pyxrt`` is not importable)."""


class DeviceError(AiowhisperError):
    """A device operation failed: a run ended in ERROR/ABORT/TIMEOUT, or a buffer could not be moved."""
