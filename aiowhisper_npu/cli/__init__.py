"""The ``aiowhisper-npu`` command: one module per command (:mod:`.main` parses and dispatches)."""

from .main import main, run_async

__all__ = ["main", "run_async"]
