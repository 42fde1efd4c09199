"""A progress bar on stderr for long benchmark runs: rich if installed, else tqdm, else nothing."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["ProgressBar"]


class ProgressBar:
    """A progress bar on stderr: rich if installed, else tqdm, else nothing."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._bar: Any = None
        self._task: Any = None
        self._kind = ""

    def __enter__(self) -> ProgressBar:
        if not self.enabled:
            return self
        try:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("{task.description:<40}"), BarColumn(), TextColumn("{task.completed}/"
                                 "{task.total}"), TimeElapsedColumn(), console=Console(file=sys.stderr),
                                 transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task("benchmark", total=None)
            self._kind = "rich"
        except ImportError:
            try:
                from tqdm import tqdm

                self._bar = tqdm(file=sys.stderr, leave=False, dynamic_ncols=True)
                self._kind = "tqdm"
            except ImportError:
                self._bar = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._kind == "rich":
            self._bar.__exit__(*exc)
        elif self._kind == "tqdm":
            self._bar.close()

    def total(self, n: int) -> None:
        if self._kind == "rich":
            self._bar.update(self._task, total=n)
        elif self._kind == "tqdm":
            self._bar.total = n
            self._bar.refresh()

    def note(self, text: str) -> None:
        if self._kind == "rich":
            self._bar.update(self._task, description=text)
        elif self._kind == "tqdm":
            self._bar.set_description_str(text[:40])

    def step(self, n: int = 1) -> None:
        if self._kind == "rich":
            self._bar.advance(self._task, n)
        elif self._kind == "tqdm":
            self._bar.update(n)
