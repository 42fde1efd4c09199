"""Deprecated names: a renamed function, method or class keeps its old name for one release, and using it
warns with :class:`DeprecationWarning` naming the new one."""

from __future__ import annotations

import sys
import warnings
from typing import Any, Callable

__all__ = ["renamed_module_attrs", "warn_renamed"]


def warn_renamed(old: str, new: str, *, stacklevel: int = 3) -> None:
    """Warn that ``old`` is deprecated in favour of ``new`` (``stacklevel`` 3: the caller of the function
    that calls this)."""
    warnings.warn(f"{old} is deprecated; use {new}", DeprecationWarning, stacklevel=stacklevel)


def renamed_module_attrs(module: str, renames: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for renamed attributes: ``renames`` maps each old name to the new name in
    the same module. An old name warns and returns the new object; any other name is an AttributeError."""

    def __getattr__(name: str) -> Any:
        new = renames.get(name)
        if new is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        warn_renamed(f"{module}.{name}", f"{module}.{new}")
        return getattr(sys.modules[module], new)

    return __getattr__
