"""The offload pool: CPU-heavy plugin work in other processes, fed through shared memory.

A worker runs every stream on one event loop, so a hook that computes for 20 ms (a
multi-MiB JSON rewrite, say) stalls every other stream of that worker for 20 ms. A plugin
that knows its work is heavy asks for the pool explicitly:

    from asm_proxy.api import offload

    def rewrite(data: memoryview, suffix: bytes) -> bytes:      # module level: importable
        ...

    async def on_response_body(self, http: Http) -> None:
        http.response.body.replace(await offload(rewrite, http.response.body, b"!"))

`offload(fn, data, *args)` calls `fn(view, *args)` with a read-only memoryview of `data`'s
bytes (`data` is a Body, bytes, bytearray or memoryview) and returns what `fn` returns.
Below `offloadThreshold` bytes it simply runs inline: shipping small work costs more than
doing it (docs/PERFORMANCE.md has the measurement). Above, the bytes are written once into
a shared memory segment (a Body's chunks go in one by one: no join first) that the pool
process reads in place; a bytes-like result of any size comes back the same way and is
copied out once. Nothing big is pickled. `fn` and `args` are pickled by reference, so `fn`
must be a module-level function and `args` small.

Each worker has its own pool (`offloadProcesses` processes, started on first use or by
`prepare_offload()`); a pool process that dies is replaced and the call it was running
raises `OffloadError`. A hook's timeout still applies while it awaits the pool.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import pickle
from collections.abc import Callable
from multiprocessing.shared_memory import SharedMemory
from typing import Any, TypeVar

from asm_proxy.body import Body
from asm_proxy.stats import counters

log = logging.getLogger("asm_proxy.offload")

R = TypeVar("R")

#: Results smaller than this come back pickled through the pipe; larger bytes-like ones
#: through the pool process's shared memory.
RESULT_IN_PIPE = 16 * 1024
#: Measured by perf/offload_threshold.py (docs/PERFORMANCE.md): from here on a JSON
#: rewrite keeps the event loop busy for less time sent to the pool than done inline.
DEFAULT_THRESHOLD = 16 * 1024


class OffloadError(RuntimeError):
    """The pool could not run the call (its process died, or the pool is closed)."""


def _attach(name: str) -> SharedMemory:
    """Open a segment the other side created. The pool processes share their worker's
    resource tracker (multiprocessing passes it on), so its bookkeeping stays right: each
    segment is unlinked once, by whoever created it (or by the worker, for a process that
    died)."""
    return SharedMemory(name=name)


def _buf(shm: SharedMemory) -> memoryview:
    buf = shm.buf
    assert buf is not None  # None only after close()
    return buf


def _grow(shm: SharedMemory | None, size: int) -> SharedMemory:
    """A segment of at least `size` bytes: `shm` itself if big enough, else a new one
    (twice the size, to grow rarely) with the old one unlinked."""
    if shm is not None and shm.size >= size:
        return shm
    if shm is not None:
        shm.close()
        with contextlib.suppress(FileNotFoundError):
            shm.unlink()
    return SharedMemory(create=True, size=max(size * 2, 1 << 20))


# --------------------------------------------------------------------------------------
# The pool process


def _child_main(conn: multiprocessing.connection.Connection) -> None:
    inputs: dict[str, SharedMemory] = {}
    output: SharedMemory | None = None
    try:
        while True:
            try:
                fn, name, size, args = conn.recv()
            except EOFError:
                return
            try:
                shm = inputs.get(name)
                if shm is None:
                    for old in inputs.values():
                        old.close()
                    inputs.clear()
                    shm = inputs[name] = _attach(name)
                sliced = _buf(shm)[:size]
                view = sliced.toreadonly()
                try:
                    result = fn(view, *args)
                finally:
                    with contextlib.suppress(BufferError):  # fn kept a view: let it be
                        view.release()
                        sliced.release()
                if isinstance(result, bytes | bytearray | memoryview) and (
                    len(result) >= RESULT_IN_PIPE
                ):
                    output = _grow(output, len(result))
                    _buf(output)[: len(result)] = result
                    conn.send(("shm", output.name, len(result)))
                else:
                    conn.send(("value", result))
            except Exception as exc:
                try:
                    conn.send(("error", exc))
                except Exception:
                    conn.send(("error", RuntimeError(repr(exc))))
    finally:
        for shm in inputs.values():
            shm.close()
        if output is not None:
            output.close()
            with contextlib.suppress(FileNotFoundError):
                output.unlink()


# --------------------------------------------------------------------------------------
# The worker's side


class _Slot:
    """One pool process, its pipe, and the input segment the worker writes into."""

    def __init__(self, pool: OffloadPool) -> None:
        self.pool = pool
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        self.conn = ours
        self.process = context.Process(
            target=_child_main, args=(theirs,), daemon=True, name="asm-proxy-offload"
        )
        self.process.start()
        theirs.close()
        self.input: SharedMemory | None = None
        self.outputs: dict[str, SharedMemory] = {}
        self.future: asyncio.Future[tuple[str, Any, int]] | None = None
        self.busy = False
        asyncio.get_running_loop().add_reader(self.conn.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            reply: tuple[Any, ...] = self.conn.recv()
        except (EOFError, OSError):
            self._died()
            return
        except Exception as exc:  # a result that does not unpickle here
            reply = ("error", OffloadError(f"cannot read the offloaded call's result: {exc!r}"))
        future, self.future = self.future, None
        if future is not None and not future.done():
            future.set_result(reply)
        self.busy = False
        self.pool._release(self)

    def _died(self) -> None:
        asyncio.get_running_loop().remove_reader(self.conn.fileno())
        future, self.future = self.future, None
        if future is not None and not future.done():
            future.set_exception(
                OffloadError(f"offload process {self.process.pid} died ({self.process.exitcode})")
            )
        self.close()
        self.pool._replace(self)

    def write_input(self, data: Any) -> int:
        """Copy `data` (bytes-like, or a Body's chunks: no join first) into this slot's
        segment; the one copy an offloaded call makes of its input."""
        size = len(data)
        self.input = _grow(self.input, size)
        buf = _buf(self.input)
        if isinstance(data, Body):
            at = 0
            # A replaced body is one bytes object already (`data` is then no join).
            for chunk in (data.data,) if data.replaced else data.chunks:
                buf[at : at + len(chunk)] = chunk
                at += len(chunk)
        else:
            buf[:size] = data
        counters.offload_bytes_in += size
        return size

    def read_output(self, name: str, size: int) -> bytes:
        shm = self.outputs.get(name)
        if shm is None:
            for old in self.outputs.values():
                old.close()
            self.outputs.clear()
            shm = self.outputs[name] = _attach(name)
        counters.offload_bytes_out += size
        return bytes(_buf(shm)[:size])

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(1)
        for shm in self.outputs.values():
            shm.close()
            with contextlib.suppress(FileNotFoundError):
                shm.unlink()  # the process may be dead and unable to
        self.outputs.clear()
        if self.input is not None:
            self.input.close()
            with contextlib.suppress(FileNotFoundError):
                self.input.unlink()
            self.input = None


class OffloadPool:
    """`processes` pool processes for one worker; see the module doc."""

    def __init__(self, processes: int = 1) -> None:
        self.processes = max(1, processes)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._slots: list[_Slot] = []
        self._idle: asyncio.Queue[_Slot] | None = None
        self._closed = False

    def start(self) -> None:
        """Spawn the pool processes (they finish starting in the background)."""
        if self._idle is not None or self._closed:
            return
        self.loop = asyncio.get_running_loop()
        self._idle = asyncio.Queue()
        for _ in range(self.processes):
            slot = _Slot(self)
            self._slots.append(slot)
            self._idle.put_nowait(slot)

    def segments(self) -> set[str]:
        """The names of the shared memory segments the pool holds now (for leak checks)."""
        names = set()
        for slot in self._slots:
            if slot.input is not None:
                names.add(slot.input.name)
            names |= {shm.name for shm in slot.outputs.values()}
        return names

    def _release(self, slot: _Slot) -> None:
        if self._idle is not None and slot in self._slots:
            self._idle.put_nowait(slot)

    def _replace(self, dead: _Slot) -> None:
        if self._closed or dead not in self._slots:
            return
        log.warning("offload process %s died; starting another", dead.process.pid)
        self._slots.remove(dead)
        slot = _Slot(self)
        self._slots.append(slot)
        self._release(slot)

    async def run(self, fn: Callable[..., R], data: Any, *args: Any) -> R:
        if self._closed:
            raise OffloadError("the offload pool is closed")
        self.start()
        assert self._idle is not None
        slot = await self._idle.get()
        try:
            size = slot.write_input(data)
            assert slot.input is not None
            future: asyncio.Future[tuple[Any, ...]] = asyncio.get_running_loop().create_future()
            slot.future, slot.busy = future, True
            try:
                slot.conn.send((fn, slot.input.name, size, args))
            except (pickle.PicklingError, AttributeError, TypeError) as exc:
                slot.future, slot.busy = None, False
                raise TypeError(
                    f"offload: {fn!r} and its arguments must be picklable (a module-level "
                    f"function): {exc}"
                ) from None
        except BaseException:
            if not slot.busy:
                self._release(slot)
            raise
        # From here the slot comes back to the idle queue when the process answers, even
        # if this call is cancelled (a hook's timeout) meanwhile.
        kind, value, size = _unpack(await future)
        counters.offloaded_calls += 1
        if kind == "error":
            raise value
        if kind == "shm":
            return slot.read_output(value, size)  # type: ignore[return-value]
        return value  # type: ignore[no-any-return]

    async def ready(self) -> None:
        """Start the processes and wait until each has answered once."""
        await asyncio.gather(*(self.run(_noop, b"") for _ in range(self.processes)))

    async def close(self) -> None:
        self.close_now()

    def close_now(self) -> None:
        self._closed = True
        for slot in self._slots:
            if self.loop is not None and not self.loop.is_closed():
                with contextlib.suppress(Exception):
                    self.loop.remove_reader(slot.conn.fileno())
            slot.close()
        self._slots.clear()


def _noop(data: memoryview) -> None:
    return None


def _unpack(reply: tuple[Any, ...]) -> tuple[str, Any, int]:
    if reply[0] == "shm":
        return "shm", reply[1], reply[2]
    return reply[0], reply[1], 0


# --------------------------------------------------------------------------------------
# The process's pool, as plugins use it

_pool: OffloadPool | None = None
_settings = (1, DEFAULT_THRESHOLD)


def configure(processes: int, threshold: int) -> None:
    """Set this process's pool size and threshold (the server does, from its settings;
    a new size applies once the running pool is closed)."""
    global _settings
    _settings = (processes, threshold)


def pool() -> OffloadPool:
    """This process's pool (one per event loop: a worker has one, tests may have several)."""
    global _pool
    loop = asyncio.get_running_loop()
    if _pool is not None and _pool.loop is not None and _pool.loop is not loop:
        _pool.close_now()
    if _pool is None or _pool._closed:
        _pool = OffloadPool(_settings[0])
    return _pool


async def prepare_offload() -> None:
    """Start this process's pool and wait until it answers: call it from an async
    `start()` of a plugin that offloads, so its first request does not wait for the pool
    processes to start (a few hundred milliseconds). Does nothing if the pool is off."""
    if _settings[0] > 0:
        await pool().ready()


async def offload(
    fn: Callable[..., R],
    data: Body | bytes | bytearray | memoryview,
    *args: Any,
    threshold: int | None = None,
) -> R:
    """`fn(memoryview of data, *args)`: inline below the threshold (`offloadThreshold`,
    or `threshold` if given) or when the pool is off (`offloadProcesses: 0`), else in the
    offload pool. See the module doc."""
    size = len(data)
    limit = _settings[1] if threshold is None else threshold
    if size < limit or _settings[0] == 0:
        if isinstance(data, Body):
            data = data.data  # joined once (and counted), cached for later reads
        return fn(memoryview(data).toreadonly(), *args)
    return await pool().run(fn, data, *args)


async def close_pool() -> None:
    global _pool
    if _pool is not None:
        await _pool.close()
        _pool = None


@atexit.register
def _at_exit() -> None:
    if _pool is not None:
        _pool.close_now()


__all__ = [
    "OffloadError",
    "OffloadPool",
    "close_pool",
    "configure",
    "offload",
    "pool",
    "prepare_offload",
]
