"""The chain: configured plugins in order, chosen per exchange, each hook under its deadline.

Order is phase (AUTHN, AUTHZ, STATS, UNSPECIFIED), then priority (higher first), then the
order in the file. Request hooks run in that order, response hooks in reverse (as Envoy
runs its own filters). Selection happens once per exchange; the result (a `Plan`) is cached
by the set of plugins chosen, so a chain of twenty costs twenty predicate calls and a dict
lookup.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from asm_proxy import observe
from asm_proxy.config import Selector
from asm_proxy.events import REQUEST_TRAILERS, RESPONSE_TRAILERS, Event, Side
from asm_proxy.exchange import Exchange, Http
from asm_proxy.matching import PathMatch, RequestPredicate, WorkloadPredicate
from asm_proxy.observe import OK, RESPOND, Outcome
from asm_proxy.plugin import BodyAccess, FailStrategy, Phase, Plugin, Respond
from asm_proxy.stats import counters

if TYPE_CHECKING:
    from asm_proxy.metrics.serving import HookMeter

log = logging.getLogger("asm_proxy.chain")

#: A bound hook method: returns None or a Respond, or an awaitable of one.
HookFn = Callable[..., Any]


class Entry:
    """One configured plugin instance with its place in the chain and its compiled scope."""

    __slots__ = (
        "_last_log",
        "_suppressed",
        "fail_open",
        "index",
        "matches",
        "meter",
        "name",
        "phase",
        "plugin",
        "priority",
        "selector",
        "selects",
        "timeout",
        "type_name",
    )

    def __init__(
        self,
        *,
        index: int,
        name: str,
        type_name: str,
        plugin: Plugin,
        phase: Phase = Phase.UNSPECIFIED,
        priority: int = 0,
        fail_strategy: FailStrategy = FailStrategy.FAIL_CLOSE,
        timeout: float | None = None,
        matches: RequestPredicate | None = None,
        selects: WorkloadPredicate | None = None,
        selector: Selector | None = None,
    ) -> None:
        self.index = index
        self.name = name
        self.type_name = type_name
        self.plugin = plugin
        self.phase = phase
        self.priority = priority
        self.fail_open = fail_strategy is FailStrategy.FAIL_OPEN
        self.timeout = timeout
        self.matches = matches
        self.selects = selects
        #: The selector as configured (`selects` is its compiled test), for render.
        self.selector = selector
        self._last_log = 0.0
        self._suppressed = 0
        #: Its hook metrics' cells (asm_proxy.metrics.serving), set when the chain is bound.
        self.meter: HookMeter | None = None

    @property
    def fail_strategy(self) -> FailStrategy:
        return FailStrategy.FAIL_OPEN if self.fail_open else FailStrategy.FAIL_CLOSE

    def report(self, what: str, exc: BaseException | None) -> None:
        """Log a failure, at most one full report a second per plugin."""
        now = time.monotonic()
        if now - self._last_log < 1.0:
            self._suppressed += 1
            return
        more = f" ({self._suppressed} more since the last report)" if self._suppressed else ""
        self._last_log, self._suppressed = now, 0
        strategy = "FAIL_OPEN: plugin skipped" if self.fail_open else "FAIL_CLOSE: request failed"
        log.warning(
            "plugin %r %s; %s%s",
            self.name,
            what,
            strategy,
            more,
            # The exception itself: report() runs after its except block has ended.
            exc_info=exc if exc is not None and not isinstance(exc, TimeoutError) else None,
            extra={"plugin": self.name},
        )

    def __repr__(self) -> str:
        return f"<Entry {self.name} ({self.type_name}) {self.phase.name} prio={self.priority}>"


@dataclass(frozen=True, slots=True)
class Hook:
    entry: Entry
    event: Event
    fn: HookFn
    is_async: bool
    side: Side
    #: Time kept back for the hooks after this one, so a hook that hangs until the
    #: deadline does not leave later plugins (perhaps fail-closed ones) with none.
    reserve: float = 0.0


#: What a later hook without its own timeout is assumed to need.
HOOK_RESERVE = 0.005


def _ordered_hooks(entries: tuple[Entry, ...], event: Event) -> tuple[Hook, ...]:
    chosen = [e for e in entries if event in e.plugin.hooks]
    hooks = []
    for i, e in enumerate(chosen):
        reserve = sum(later.timeout or HOOK_RESERVE for later in chosen[i + 1 :])
        is_async = event in e.plugin.async_hooks
        fn = getattr(e.plugin, event.hook)
        hooks.append(Hook(e, event, fn, is_async, event.side, reserve))
    return tuple(hooks)


@dataclass(frozen=True, slots=True)
class Needs:
    """Which later phases Envoy must send us for this exchange."""

    request_body: BodyAccess = BodyAccess.NONE
    request_trailers: bool = False
    response_headers: bool = False
    response_body: BodyAccess = BodyAccess.NONE
    response_trailers: bool = False


def _needs(entries: Iterable[Entry], exchange: Exchange | None = None) -> Needs:
    """What `entries` need of Envoy; with `exchange`, leaving out what plugins said done()
    to on it."""
    request_body = response_body = BodyAccess.NONE
    request_trailers = response_headers = response_trailers = False
    for entry in entries:
        plugin = entry.plugin
        hooks = plugin.hooks
        if exchange is None or not exchange.is_done(plugin, "request"):
            request_body = max(request_body, plugin.body_access("request"), key=lambda a: a.value)
            request_trailers = request_trailers or REQUEST_TRAILERS in hooks
        if exchange is None or not exchange.is_done(plugin, "response"):
            response_body = max(
                response_body, plugin.body_access("response"), key=lambda a: a.value
            )
            response_trailers = response_trailers or RESPONSE_TRAILERS in hooks
            response_headers = response_headers or any(not e.is_request for e in hooks)
    return Needs(request_body, request_trailers, response_headers, response_body, response_trailers)


class Plan:
    """The plugins that apply to one exchange, each event's hooks in running order."""

    __slots__ = ("entries", "hooks", "needs")

    def __init__(self, entries: tuple[Entry, ...]) -> None:
        self.entries = entries
        backwards = tuple(reversed(entries))
        self.hooks: dict[Event, tuple[Hook, ...]] = {
            event: _ordered_hooks(entries if event.is_request else backwards, event)
            for event in Event
        }
        self.needs = _needs(entries)

    def needs_now(self, exchange: Exchange) -> Needs:
        """Needs, leaving out what plugins said `http.done()` to."""
        if not exchange.done:
            return self.needs
        return _needs(self.entries, exchange)

    def __bool__(self) -> bool:
        return bool(self.entries)

    def __repr__(self) -> str:
        return f"<Plan {[e.name for e in self.entries]}>"


def _sort_key(entry: Entry) -> tuple[int, int, int]:
    return (entry.phase.value, -entry.priority, entry.index)


class Chain:
    """An immutable, ordered set of plugin instances; swapped whole on reload."""

    def __init__(
        self, entries: Iterable[Entry], *, source: str = "", authz_via_ext_authz: bool = False
    ) -> None:
        self.entries: tuple[Entry, ...] = tuple(sorted(entries, key=_sort_key))
        self.source = source
        self._plans: dict[tuple[int, int], Plan] = {}
        self._authz_mask = sum(
            1 << i for i, e in enumerate(self.entries) if e.phase in (Phase.AUTHN, Phase.AUTHZ)
        )
        #: The plugins an ext_proc stream runs: all of them, or with `authzVia: ext_authz`
        #: all but the AUTHN/AUTHZ ones, which then run once, in Check.
        self._all_mask = (1 << len(self.entries)) - 1
        if authz_via_ext_authz:
            self._all_mask &= ~self._authz_mask
        self._any_scoped = any(e.matches or e.selects for e in self.entries)
        #: (bit, path test, other match, selects) of each plugin: selection computes the
        #: path once and makes no method calls of its own.
        self._scopes = tuple(
            (
                1 << i,
                e.matches.test if isinstance(e.matches, PathMatch) else None,
                None if isinstance(e.matches, PathMatch) else e.matches,
                e.selects,
            )
            for i, e in enumerate(self.entries)
        )
        #: The scopes worth testing for a workload in each namespace: those of plugins
        #: whose selector names it, and those of plugins not confined to namespaces. A
        #: shared asm-proxy with many namespaces' plugins then tests only a workload's own
        #: (500 namespaces x 2 plugins: 131 -> ~2 us per selection).
        self._open_scopes = tuple(
            scope
            for scope, e in zip(self._scopes, self.entries, strict=True)
            if not (e.selector and e.selector.namespaces)
        )
        per_namespace: dict[str, list[tuple[Any, ...]]] = {}
        for scope, e in zip(self._scopes, self.entries, strict=True):
            for namespace in e.selector.namespaces if e.selector else ():
                per_namespace.setdefault(namespace, []).append(scope)
        self._namespace_scopes = {
            ns: tuple(sorted([*self._open_scopes, *scopes], key=lambda s: s[0]))
            for ns, scopes in per_namespace.items()
        }
        self._streams = 0
        self._retired = False
        self._closed = False
        self._on_idle: Callable[[], Any] | None = None

    # -- selection -------------------------------------------------------------------

    def select(self, exchange: Exchange, *, authz_only: bool = False) -> Plan:
        allowed = self._authz_mask if authz_only else self._all_mask
        if not self._any_scoped:
            mask = allowed
        else:
            mask = 0
            request = exchange.http.request
            path: str | None = None
            workload = None
            scopes = self._scopes
            if self._namespace_scopes:
                workload = exchange.workload()
                scopes = self._namespace_scopes.get(workload.namespace or "", self._open_scopes)
            for bit, path_test, matches, selects in scopes:
                if not allowed & bit:
                    continue
                if path_test is not None:
                    if path is None:
                        path = request.path_only
                    if not path_test(path):
                        continue
                elif matches is not None and not matches(request):
                    continue
                if selects is not None:
                    if workload is None:
                        workload = exchange.workload()
                    if not selects(workload):
                        continue
                mask |= bit
        key = (mask, allowed)
        plan = self._plans.get(key)
        if plan is None:
            plan = Plan(tuple(e for bit, e in enumerate(self.entries) if mask >> bit & 1))
            if len(self._plans) < 4096:
                self._plans[key] = plan
        return plan

    # -- lifecycle: streams in flight keep the chain they started with ---------------------

    def acquire(self) -> None:
        self._streams += 1

    def release(self) -> None:
        self._streams -= 1
        if self._retired and self._streams == 0 and self._on_idle is not None:
            callback, self._on_idle = self._on_idle, None
            callback()

    @property
    def in_flight(self) -> int:
        return self._streams

    def retire(self, on_idle: Callable[[], Any]) -> None:
        """Call `on_idle` once no stream uses this chain (now, if none does)."""
        self._retired = True
        if self._streams == 0:
            on_idle()
        else:
            self._on_idle = on_idle

    async def start(self) -> None:
        started: list[Entry] = []
        try:
            for entry in self.entries:
                await entry.plugin.start()
                started.append(entry)
        except BaseException:
            for entry in reversed(started):
                await _close_quietly(entry)
            raise

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for entry in reversed(self.entries):
            await _close_quietly(entry)

    def describe(self) -> list[dict[str, Any]]:
        """The chain as data, in running order (for logs and a future /config_dump)."""
        return [
            {
                "name": e.name,
                "type": e.type_name,
                "phase": e.phase.name,
                "priority": e.priority,
                "failStrategy": e.fail_strategy.value,
                "timeout": e.timeout,
                "hooks": [event.hook for event in sorted(e.plugin.hooks)],
            }
            for e in self.entries
        ]


async def _close_quietly(entry: Entry) -> None:
    try:
        await entry.plugin.close()
    except Exception:
        log.exception("plugin %r failed to close", entry.name)


# --------------------------------------------------------------------------------------
# Running hooks


def fail_closed_response(entry: Entry, reason: str) -> Respond:
    return Respond(status=500, details=f"asm_proxy_plugin_{reason}:{entry.name}")


async def run_hooks(
    hooks: tuple[Hook, ...], exchange: Exchange, args: tuple[Any, ...], deadline: float
) -> Respond | None:
    """Run `hooks` in order until one answers with a Respond (returned) or all are done.

    `deadline` is a loop.time() by which the message must be answered. A hook that raises,
    overruns its timeout or the deadline, or returns something that is not a Respond,
    has its changes undone and is handled per its plugin's fail strategy.
    """
    loop = asyncio.get_running_loop()
    undo = exchange.undo
    done = exchange.done
    http = exchange.http
    watching = exchange.observers
    for hook in hooks:
        entry = hook.entry
        if done and (id(entry.plugin), hook.side) in done:
            continue
        start = loop.time()
        remaining = deadline - start
        # An awaiting hook is cut off at its timeout, or at the deadline less what the
        # hooks after it need (at most half of what is left). A sync hook cannot be cut
        # off, and a quick one costs nothing even just past the deadline: it fails only if
        # it ran longer than its own timeout.
        limit = remaining - min(hook.reserve, remaining / 2)
        if entry.timeout is not None and entry.timeout < limit:
            limit = entry.timeout
        if hook.is_async and limit <= 0:
            counters.hook_timeouts += 1
            entry.report("had no time left before the message deadline", None)
            if entry.meter is not None:
                entry.meter.record(hook.event, Outcome.SKIPPED, 0.0)
            if watching:
                _after(watching, _before(watching, hook, http), hook, Outcome.SKIPPED, 0.0, None)
            outcome = _failed(entry, "timeout")
            if outcome is not None:
                return outcome
            continue
        tokens = _before(watching, hook, http) if watching else None
        mark = undo.mark()
        exchange.current = entry.plugin
        counters.hook_calls += 1
        failure: Outcome | None = None
        error: BaseException | None = None
        result: Any = None
        try:
            if hook.is_async:
                async with asyncio.timeout(limit):
                    result = await hook.fn(http, *args)
            else:
                result = hook.fn(http, *args)
                if (
                    result is not None
                    and type(result) is not Respond
                    and inspect.isawaitable(result)
                ):
                    async with asyncio.timeout(max(limit - (loop.time() - start), 0)):
                        result = await result
                elif entry.timeout is not None and loop.time() - start > entry.timeout:
                    failure = Outcome.TIMEOUT
        except TimeoutError as exc:
            failure, error = Outcome.TIMEOUT, exc
        except Exception as exc:
            failure, error = Outcome.ERROR, exc
        finally:
            exchange.current = None
        if failure is None and result is not None and type(result) is not Respond:
            failure = Outcome.ERROR
            error = TypeError(
                f"hook {hook.fn.__qualname__} returned {type(result).__name__}; "
                "return None or a Respond"
            )
        meter = entry.meter
        if meter is not None or tokens:
            ended = failure or (OK if result is None else RESPOND)
            took = loop.time() - start
            if meter is not None:
                meter.record(hook.event, ended, took)
            if tokens:
                _after(watching, tokens, hook, ended, took, error)
        if failure is None:
            if result is not None:
                return result  # type: ignore[no-any-return]
            continue
        undo.rollback(mark)
        if failure is Outcome.TIMEOUT:
            counters.hook_timeouts += 1
            ms = (loop.time() - start) * 1000
            entry.report(f"overran its time ({ms:.0f}ms, limit {limit * 1000:.0f}ms)", error)
        else:
            counters.hook_errors += 1
            entry.report(f"failed: {error!r}", error)
        outcome = _failed(entry, failure.value)
        if outcome is not None:
            return outcome
    return None


def _failed(entry: Entry, reason: str) -> Respond | None:
    if entry.fail_open:
        counters.fail_open += 1
        return None
    counters.fail_close += 1
    return fail_closed_response(entry, reason)


# -- observers: each call guarded, an observer that raises is dropped ----------------------


def _drop(observer: observe.HookObserver, watching: list[observe.HookObserver]) -> None:
    """Remove `observer` for good: from the process-wide list and from the exchange's own
    list, which may be another (a traced exchange's)."""
    log.exception("hook observer %r failed; it is removed", observer)
    observe.remove_observer(observer)
    if observer in watching:
        watching.remove(observer)


Watched = list[tuple[observe.HookObserver, Any]]


def _before(watching: list[observe.HookObserver], hook: Hook, http: Http) -> Watched:
    """Each observer that returned a token with its token (None: not interested in this
    call, so no `after` either)."""
    tokens: Watched = []
    for observer in list(watching):
        try:
            token = observer.before(hook.entry, hook.event, http)
        except Exception:
            _drop(observer, watching)
            continue
        if token is not None:
            tokens.append((observer, token))
    return tokens


def _after(
    watching: list[observe.HookObserver],
    tokens: Watched,
    hook: Hook,
    outcome: Outcome,
    seconds: float,
    error: BaseException | None,
) -> None:
    for observer, token in tokens:
        try:
            observer.after(token, hook.entry, hook.event, outcome, seconds, error)
        except Exception:
            _drop(observer, watching)
