"""Progress of long commands over many items (archive, drain, search of an S3 prefix).

On a terminal: a rich progress bar with the count, the total, the rate and the time left, on
stderr, gone when done. Otherwise (CI logs, pipes): one plain line per item, so a log shows what
was done and how far it got, without control sequences.
"""

from __future__ import annotations

import sys
import threading
from types import TracebackType
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

__all__ = ["ItemProgress"]


class ItemProgress:
    """``with ItemProgress("archived", total) as p: ... p.advance(name)`` per finished item."""

    def __init__(
        self, verb: str, total: int = 0, *, stream: TextIO | None = None, tty: bool | None = None
    ) -> None:
        self.verb = verb
        self.total = total
        self.done = 0
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty() if tty is None else tty
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._lock = threading.Lock()  # items may finish on several threads (downloads)

    def __enter__(self) -> ItemProgress:
        if self._tty:
            self._bar = _bar(self._stream)
            self._task = self._bar.add_task(self.verb, total=self.total or None)
            self._bar.start()
        return self

    def set_total(self, total: int) -> None:
        """The number of items, once known (a listing may come first)."""
        self.total = total
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, total=total)

    def advance(self, name: str, detail: str = "", *, count: int = 1) -> None:
        """``count`` more items finished (one line per call without a terminal)."""
        with self._lock:
            self.done += count
            if self._bar is not None and self._task is not None:
                self._bar.update(self._task, advance=count)
                return
            of = f"/{self.total}" if self.total else ""
            tail = f" {detail}" if detail else ""
            line = f"airlock: {self.verb} {self.done}{of}: {name}{tail}"
            print(line, file=self._stream, flush=True)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()


def _bar(stream: TextIO) -> Progress:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        Task,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Rate(ProgressColumn):
        """Items per second (rich's speed columns count bytes)."""

        def render(self, task: Task) -> Text:
            return Text(f"{task.speed:.1f}/s" if task.speed else "", style="progress.data.speed")

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        Rate(),
        TimeRemainingColumn(),
        console=Console(file=stream, force_terminal=True),
        transient=True,
    )
