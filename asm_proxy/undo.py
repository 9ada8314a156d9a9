"""An undo log, so a plugin hook that fails leaves no half-applied changes behind.

Every mutating call a plugin makes (header set, body replace, metadata) records how to undo
itself. The chain marks the log before a hook and rolls back to the mark when the hook
raises or overruns; a hook that succeeds costs one list append per change, nothing more.
"""

from __future__ import annotations

from collections.abc import Callable


class UndoLog:
    """A stack of undo actions; `mark()` and `rollback(mark)` bracket one plugin hook."""

    __slots__ = ("_actions",)

    def __init__(self) -> None:
        self._actions: list[Callable[[], None]] = []

    def record(self, undo: Callable[[], None]) -> None:
        self._actions.append(undo)

    def mark(self) -> int:
        return len(self._actions)

    def rollback(self, mark: int) -> int:
        """Undo everything recorded since `mark`, newest first; returns how many actions ran."""
        actions = self._actions
        undone = 0
        while len(actions) > mark:
            actions.pop()()
            undone += 1
        return undone

    def commit(self) -> None:
        """Forget the recorded actions: what is done can no longer be undone."""
        self._actions.clear()

    def __len__(self) -> int:
        return len(self._actions)
