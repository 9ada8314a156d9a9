"""The observer seam of the hook loop: metrics and tracing attach here, not in the loop.

An observer is told before each hook runs and after it ends (with its outcome and how long
it took), like pluggy's hook-call monitoring. With no observer registered the loop pays one
truth test per hook; observers are process-wide, so they outlive a chain swapped by a
reload.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from asm_proxy.chain import Entry
    from asm_proxy.events import Event
    from asm_proxy.exchange import Http


class Outcome(enum.Enum):
    """How one hook call ended."""

    OK = "ok"  # returned None: the chain goes on
    RESPOND = "respond"  # returned a Respond: the chain stops, the client gets it
    ERROR = "error"  # raised, or returned something else (its changes undone)
    TIMEOUT = "timeout"  # overran its timeout or the message deadline (changes undone)
    SKIPPED = "skipped"  # no time was left to start it (counts as a timeout)

    @property
    def failed(self) -> bool:
        return self in (Outcome.ERROR, Outcome.TIMEOUT, Outcome.SKIPPED)


class HookObserver(Protocol):
    """Told about every hook call. `before` returns a token handed back to `after` (a span,
    a start time); neither may raise (an exception is logged and the observer dropped)."""

    def before(self, entry: Entry, event: Event, http: Http) -> Any: ...

    def after(
        self,
        token: Any,
        entry: Entry,
        event: Event,
        outcome: Outcome,
        seconds: float,
        error: BaseException | None,
    ) -> None: ...


#: The registered observers; the hook loop reads this list directly.
observers: list[HookObserver] = []


def add_observer(observer: HookObserver) -> None:
    if observer not in observers:
        observers.append(observer)


def remove_observer(observer: HookObserver) -> None:
    if observer in observers:
        observers.remove(observer)
