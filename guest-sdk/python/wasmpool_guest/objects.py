"""Shared objects inside a Python task, with Python's names, methods and exceptions.

The host owns every object (it makes them with its ``Manager``); a task is given one in its
arguments, as Python passes a queue to ``Process(args=(q,))``, and uses it as a Python
program uses a ``multiprocessing`` (or ``Manager``) object::

    import queue
    from wasmpool_guest import task

    @task
    def worker(q, lock, counts):
        with lock:
            counts["seen"] = counts.get("seen", 0) + 1
        try:
            return q.get(timeout=0.5)
        except queue.Empty:
            return None

Handles travel inside MessagePack values as ``[tag, id, token]`` arrays (as the Rust SDK
writes them): decoding an argument (or a value read from a queue, pipe, dict or list) that
is a handle gives the object, and encoding an object writes its handle, so objects can be
passed on. Every blocking method takes Python's ``block``/``timeout`` (in seconds).

Exceptions are Python's: ``queue.Empty`` and ``queue.Full``, ``EOFError`` at the end of a
pipe (``BrokenPipeError`` sending into one whose other end is closed, ``OSError`` on an end
this task closed), ``threading.BrokenBarrierError``, ``KeyError`` / ``IndexError`` /
``ValueError`` as a dict or list raises them, ``RuntimeError`` releasing a lock that is not
held, ``ValueError`` releasing a bounded semaphore too often or putting on a closed queue,
``TimeoutError`` where Python has no answer of its own for a timeout. A handle the host no
longer knows raises :class:`StaleHandleError`; a message over the host's size limit,
:class:`MessageTooLarge`.
"""

import math
import queue as _queue
import threading as _threading
import time as _time

from . import _msgpack

__all__ = [
    "Queue",
    "JoinableQueue",
    "SimpleQueue",
    "Connection",
    "Lock",
    "RLock",
    "Semaphore",
    "BoundedSemaphore",
    "Condition",
    "Event",
    "Barrier",
    "Dict",
    "List",
    "StaleHandleError",
    "MessageTooLarge",
    "ABSENT",
]


class _Absent:
    __slots__ = ()

    def __repr__(self):
        return "ABSENT"


#: For :meth:`Dict.compare_and_swap`: the key is expected to be absent (``None`` is a value).
ABSENT = _Absent()


class StaleHandleError(OSError):
    """The handle names no live object this task may use (forged, stale or foreign)."""


class MessageTooLarge(ValueError):
    """The value is larger than the host accepts for one object."""


class ObjectFault(Exception):
    """An ``object-error`` of the WIT world, as the transport raises it: ``kind`` is the
    case's name (``"empty"``, ``"closed"``, …), ``message`` its text ("" if it has none)."""

    def __init__(self, kind, message=""):
        super().__init__(kind, message)
        self.kind = kind
        self.message = message


class RunAction:
    """The answer of ``barrier-wait-action`` that makes this party run the action."""

    __slots__ = ("index",)

    def __init__(self, index):
        self.index = index


class _NoTransport:
    def invoke(self, handle, op, arg, timeout_ms):
        raise RuntimeError(
            "shared objects work only inside a task run by wasmpool (no host to ask here)"
        )


#: Carries one operation to the host: ``invoke(handle, op, arg, timeout_ms)`` where
#: ``handle`` is ``(id, token)``, ``op`` the WIT request's name (``"queue-put"``, …),
#: ``arg`` its payload (``None`` if it has none); answers the response's payload (``None``
#: for ``unit``), a :class:`RunAction`, or raises :class:`ObjectFault`. Set by the
#: component's exports; tests may install their own.
transport = _NoTransport()


def _ms(block, timeout):
    """A Python ``block``/``timeout`` (seconds) as the WIT world's ``timeout-ms``."""
    if not block:
        return 0
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
    if timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")
    if timeout == 0:
        return 0
    if math.isinf(timeout):
        return None
    # Never 0 for a positive timeout (0 would mean "do not wait at all").
    return max(1, math.ceil(timeout * 1000))


def _lock_ms(block, timeout):
    # threading's `acquire(blocking=True, timeout=-1)`: -1 is "no timeout" too.
    if timeout is not None and timeout == -1 and not isinstance(timeout, bool):
        timeout = None
    if not block and timeout is not None:
        raise ValueError("can't specify a timeout for a non-blocking call")
    return _ms(block, timeout)


def _pack(value):
    try:
        return _msgpack.packb(value)
    except _msgpack.EncodeError as e:
        raise TypeError(f"cannot share the value: {e}") from None


def _unpack(data):
    return _msgpack.unpackb(data)


class _Shared:
    """What every shared object is: a handle (id, token) of one kind."""

    __slots__ = ("_id", "_token")
    _tag = ""

    def __init__(self, id, token):
        self._id = id
        self._token = token

    def __wasmpool_handle__(self):
        return [self._tag, self._id, self._token]

    def __repr__(self):
        return f"<{type(self).__name__} id={self._id}>"

    def __eq__(self, other):
        # The same handle: the two ends of a pipe are two handles of one object.
        return type(other) is type(self) and (other._id, other._token) == (self._id, self._token)

    def __hash__(self):
        return hash((self._tag, self._id, self._token))

    def __reduce__(self):
        return (type(self), (self._id, self._token))

    def _call(self, op, arg=None, timeout_ms=None):
        try:
            return transport.invoke((self._id, self._token), op, arg, timeout_ms)
        except ObjectFault as f:
            raise self._error(op, f) from None

    def _error(self, op, f):
        return _common_error(self, op, f)


def _prefixed(message, default):
    """The Python exception a host message names with its prefix (``KeyError: …``)."""
    for name, kind in (("KeyError", KeyError), ("IndexError", IndexError), ("ValueError", ValueError)):
        if message.startswith(name):
            rest = message[len(name) :].lstrip(":").strip()
            if kind is KeyError and rest.startswith("'") and rest.endswith("'"):
                rest = rest[1:-1]
            return kind(rest) if rest else kind()
    return default(message)


def _common_error(obj, op, f):
    kind, message = f.kind, f.message
    if kind == "stale":
        return StaleHandleError(f"{obj!r}: {message}" if message else f"{obj!r} is stale")
    if kind == "too-large":
        return MessageTooLarge(message)
    if kind == "timeout":
        return TimeoutError(f"{op} timed out")
    if kind == "empty":
        return _queue.Empty()
    if kind == "full":
        return _queue.Full()
    if kind == "broken":
        return _threading.BrokenBarrierError()
    if kind == "missing":
        return _prefixed(message, LookupError)
    if kind == "not-owner":
        return RuntimeError(message)
    if kind == "closed":
        return ValueError(message)
    return ValueError(message or kind)


# ---- queues ----------------------------------------------------------------------------


class Queue(_Shared):
    """``multiprocessing.Queue`` (and ``JoinableQueue``, ``SimpleQueue``: one kind on the
    host, which knows whether it is joinable): ``put``/``get`` with ``block`` and
    ``timeout``, ``put_nowait``/``get_nowait``, ``qsize``, ``empty``, ``full``, ``close``,
    ``task_done``, ``join``."""

    __slots__ = ()
    _tag = "wasmpool:queue"

    def put(self, obj, block=True, timeout=None):
        """Puts ``obj``; waits for room in a bounded queue, at most ``timeout`` seconds
        (``queue.Full`` then). ``ValueError`` if the queue is closed."""
        self._call("queue-put", _pack(obj), _ms(block, timeout))

    def get(self, block=True, timeout=None):
        """Takes the next item, waiting at most ``timeout`` seconds (``queue.Empty``
        then). ``ValueError`` once the queue is closed and drained."""
        return _unpack(self._call("queue-get", None, _ms(block, timeout)))

    def put_nowait(self, obj):
        return self.put(obj, False)

    def get_nowait(self):
        return self.get(False)

    def qsize(self):
        """How many items are queued (exact: the host owns the queue)."""
        return self._call("queue-qsize")

    @property
    def maxsize(self):
        """The capacity; 0 is unbounded."""
        return self._call("queue-maxsize")

    def empty(self):
        return self.qsize() == 0

    def full(self):
        cap = self.maxsize
        return cap > 0 and self.qsize() >= cap

    def close(self):
        """Refuses further puts (for everyone); gets drain what is queued."""
        self._call("queue-close")

    def join_thread(self):
        """Nothing to wait for: a put is with the host when it returns."""

    def cancel_join_thread(self):
        """Nothing to cancel (see ``join_thread``)."""

    def task_done(self):
        """Marks one item taken with ``get`` as processed (a joinable queue);
        ``ValueError`` if called more times than items were put."""
        self._call("queue-task-done")

    def join(self, timeout=None):
        """Blocks until every item put has been marked done (beyond Python: at most
        ``timeout`` seconds, then ``TimeoutError``)."""
        self._call("queue-join", None, _ms(True, timeout))

    def _error(self, op, f):
        if f.kind == "closed":
            return ValueError(f"Queue {self!r} is closed")
        if f.kind == "invalid" and op == "queue-task-done":
            return ValueError(f.message or "task_done() called too many times")
        return _common_error(self, op, f)


JoinableQueue = Queue
SimpleQueue = Queue


# ---- pipes -----------------------------------------------------------------------------


class Connection(_Shared):
    """One end of a ``multiprocessing.Pipe``: ``send``/``recv``, ``send_bytes``/
    ``recv_bytes``, ``poll``, ``close``. ``recv`` raises ``EOFError`` once the other end is
    closed and nothing is left."""

    __slots__ = ("_closed",)
    _tag = "wasmpool:connection"

    def __init__(self, id, token):
        super().__init__(id, token)
        self._closed = False

    def send(self, obj):
        """Sends ``obj`` to the other end."""
        self._check()
        self._call("conn-send", _pack(obj))

    def recv(self):
        """The next object sent from the other end (waits for one)."""
        self._check()
        return _unpack(self._call("conn-recv"))

    def send_bytes(self, buf, offset=0, size=None):
        """Sends ``buf[offset:offset+size]`` as one message of bytes."""
        self._check()
        data = memoryview(buf).cast("B")
        n = len(data)
        if offset < 0:
            raise ValueError("offset is negative")
        if n < offset:
            raise ValueError("buffer length < offset")
        if size is None:
            size = n - offset
        elif size < 0:
            raise ValueError("size is negative")
        elif offset + size > n:
            raise ValueError("buffer length < offset + size")
        self._call("conn-send", _msgpack.packb(bytes(data[offset : offset + size])))

    def recv_bytes(self, maxlength=None):
        """The next message, which must be bytes (``OSError`` if longer than
        ``maxlength``)."""
        self._check()
        if maxlength is not None and maxlength < 0:
            raise ValueError("negative maxlength")
        value = _unpack(self._call("conn-recv"))
        if not isinstance(value, (bytes, bytearray)):
            raise OSError(f"the message is not bytes but {type(value).__name__}")
        if maxlength is not None and len(value) > maxlength:
            raise OSError("bad message length")
        return bytes(value)

    def recv_bytes_into(self, buf, offset=0):
        """Reads the next message of bytes into ``buf`` at ``offset``; its length."""
        data = self.recv_bytes()
        view = memoryview(buf).cast("B")
        if offset < 0 or offset > len(view):
            raise ValueError("offset out of bounds")
        if len(data) > len(view) - offset:
            raise _BufferTooShort(data)
        view[offset : offset + len(data)] = data
        return len(data)

    def poll(self, timeout=0.0):
        """Whether there is something to ``recv`` (or the other end is closed), waiting at
        most ``timeout`` seconds (``None``: until there is)."""
        self._check()
        return bool(self._call("conn-poll", None, _ms(True, timeout)))

    def close(self):
        """Closes this end: the other end's ``recv`` then raises ``EOFError``."""
        if not self._closed:
            self._closed = True
            self._call("conn-close")

    @property
    def closed(self):
        return self._closed

    @property
    def readable(self):
        return True

    @property
    def writable(self):
        return True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _check(self):
        if self._closed:
            raise OSError("handle is closed")

    def _error(self, op, f):
        if f.kind == "closed":
            message = f.message
            if message.startswith("end of file"):
                return EOFError()
            if message.startswith("broken pipe"):
                return BrokenPipeError(32, "Broken pipe")
            return OSError("handle is closed")
        if f.kind == "invalid" and "one-way pipe" in f.message:
            return OSError(f.message)
        return _common_error(self, op, f)


def _buffer_too_short():
    try:
        from multiprocessing import BufferTooShort
    except ImportError:  # pragma: no cover - multiprocessing is always there
        return OSError
    return BufferTooShort


_BufferTooShort = _buffer_too_short()


# ---- locks -----------------------------------------------------------------------------


class _LockLike(_Shared):
    __slots__ = ()

    def acquire(self, block=True, timeout=None, *, blocking=None):
        """Acquires, waiting at most ``timeout`` seconds (``None`` or -1: no limit);
        answers whether it was acquired. ``block=False`` (or ``blocking=False``) never
        waits."""
        if blocking is not None:
            block = blocking
        return bool(self._call("acquire", None, _lock_ms(block, timeout)))

    def release(self):
        self._call("release")

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


class Lock(_LockLike):
    """A lock (``multiprocessing.Lock``, a ``Manager().Lock()``): ``acquire``, ``release``,
    ``locked``, ``with``. Any process may release it; releasing it unlocked raises
    ``RuntimeError``."""

    __slots__ = ()
    _tag = "wasmpool:lock"

    def locked(self):
        """Whether anyone holds it now."""
        return bool(self._call("locked"))


class RLock(_LockLike):
    """A recursive lock: its owner may acquire it again; only the owner may release it
    (``RuntimeError`` otherwise)."""

    __slots__ = ()
    _tag = "wasmpool:rlock"

    def locked(self):
        return bool(self._call("locked"))


class Semaphore(_LockLike):
    """A semaphore (``BoundedSemaphore`` too: the host knows which it is, and a bounded
    one released too often raises ``ValueError``)."""

    __slots__ = ()
    _tag = "wasmpool:semaphore"

    def get_value(self):
        """The current value."""
        return self._call("semaphore-value")

    def release(self, n=1):
        if n < 1:
            raise ValueError("n must be one or more")
        for _ in range(n):
            self._call("release")

    def _error(self, op, f):
        if f.kind == "not-owner":
            return ValueError("Semaphore released too many times")
        return _common_error(self, op, f)


BoundedSemaphore = Semaphore


class Condition(_LockLike):
    """A condition variable with its own recursive lock: ``acquire``/``release``/``with``,
    ``wait``, ``wait_for``, ``notify``, ``notify_all`` (waiting or notifying without the lock
    raises ``RuntimeError``)."""

    __slots__ = ()
    _tag = "wasmpool:condition"

    def wait(self, timeout=None):
        """Releases the lock, waits at most ``timeout`` seconds for a notification and
        acquires the lock again; answers whether it was notified."""
        return bool(self._call("condition-wait", None, _ms(True, timeout)))

    def wait_for(self, predicate, timeout=None):
        """Waits until ``predicate()`` is true (checked first, and after each wake-up, with
        the lock held), at most ``timeout`` seconds in all; its last value."""
        end = None
        result = predicate()
        while not result:
            if timeout is not None:
                if end is None:
                    end = _time.monotonic() + timeout
                    left = timeout
                else:
                    left = end - _time.monotonic()
                    if left <= 0:
                        break
                self.wait(left)
            else:
                self.wait()
            result = predicate()
        return result

    def notify(self, n=1):
        if n < 0:
            raise ValueError("n must be non-negative")
        self._call("condition-notify", min(n, 0xFFFFFFFF))

    def notify_all(self):
        self._call("condition-notify-all")

    notifyAll = notify_all


class Event(_Shared):
    """An event: ``set``, ``clear``, ``is_set``, ``wait(timeout=None)``."""

    __slots__ = ()
    _tag = "wasmpool:event"

    def set(self):
        self._call("event-set")

    def clear(self):
        self._call("event-clear")

    def is_set(self):
        return bool(self._call("event-is-set"))

    isSet = is_set

    def wait(self, timeout=None):
        """Waits at most ``timeout`` seconds for the flag; answers whether it is set."""
        return bool(self._call("event-wait", None, _ms(True, timeout)))


class Barrier(_Shared):
    """A barrier: ``wait(timeout=None)`` answers this party's arrival index;
    ``abort``, ``reset``, ``parties``, ``n_waiting``, ``broken``. A broken barrier (aborted,
    reset while waiting, a waiter's timeout or death) raises
    ``threading.BrokenBarrierError``."""

    __slots__ = ()
    _tag = "wasmpool:barrier"

    def wait(self, timeout=None, *, action=None):
        """Waits for every party. Beyond Python, ``action`` offers a function for the round
        (a function cannot cross processes, so each party offers its own): one party that
        offered runs it once all have arrived, before any is released; if it raises, the
        barrier breaks and this party gets its exception."""
        ms = _ms(True, timeout)
        if action is None:
            return self._call("barrier-wait", None, ms)
        answer = self._call("barrier-wait-action", None, ms)
        if not isinstance(answer, RunAction):
            return answer
        try:
            action()
        except BaseException:
            try:
                self._call("barrier-action-done", False)
            except Exception:  # noqa: BLE001 - the action's own exception is the answer
                pass
            raise
        self._call("barrier-action-done", True)
        return answer.index

    def abort(self):
        self._call("barrier-abort")

    def reset(self):
        self._call("barrier-reset")

    @property
    def parties(self):
        return self._call("barrier-parties")

    @property
    def n_waiting(self):
        return self._call("barrier-n-waiting")

    @property
    def broken(self):
        return bool(self._call("barrier-broken"))

    def _error(self, op, f):
        if f.kind in ("broken", "timeout") and op.startswith("barrier-wait"):
            return _threading.BrokenBarrierError()
        return _common_error(self, op, f)


# ---- dict and list ---------------------------------------------------------------------

_MISSING = object()


class Dict(_Shared):
    """A ``Manager().dict()``: the mapping protocol (``d[k]``, ``d[k] = v``, ``del d[k]``,
    ``k in d``, ``len``, iteration, ``get``, ``keys``/``values``/``items`` (lists, as a
    proxy's are), ``pop``, ``setdefault``, ``update``, ``popitem``, ``clear``, ``copy``),
    plus atomic ``increment`` and ``compare_and_swap``. Keys compare by their MessagePack
    encoding (``1`` and ``1.0`` are different keys; a tuple and a list of the same items
    are one)."""

    __slots__ = ()
    _tag = "wasmpool:dict"

    def __getitem__(self, key):
        data = self._call("dict-get", _pack(key))
        if data is None:
            raise KeyError(key)
        return _unpack(data)

    def __setitem__(self, key, value):
        self._call("dict-set", (_pack(key), _pack(value)))

    def __delitem__(self, key):
        try:
            self._call("dict-delete", _pack(key))
        except LookupError:
            raise KeyError(key) from None

    def __contains__(self, key):
        return bool(self._call("dict-contains", _pack(key)))

    def __len__(self):
        return self._call("dict-len")

    def __iter__(self):
        return iter(self.keys())

    def get(self, key, default=None):
        data = self._call("dict-get", _pack(key))
        return default if data is None else _unpack(data)

    def keys(self):
        return [_unpack(k) for k in self._call("dict-keys")]

    def values(self):
        return [_unpack(v) for v in self._call("dict-values")]

    def items(self):
        return [(_unpack(k), _unpack(v)) for k, v in self._call("dict-items")]

    def pop(self, key, default=_MISSING):
        data = self._call("dict-pop", _pack(key))
        if data is None:
            if default is _MISSING:
                raise KeyError(key)
            return default
        return _unpack(data)

    def popitem(self):
        entries = self._call("dict-popitem")
        if len(entries) != 1:
            raise ValueError(f"popitem answered {len(entries)} entries")
        k, v = entries[0]
        return (_unpack(k), _unpack(v))

    def setdefault(self, key, default=None):
        data = self._call("dict-setdefault", (_pack(key), _pack(default)))
        return default if data is None else _unpack(data)

    def update(self, other=(), /, **kwargs):
        if hasattr(other, "keys"):
            pairs = [(k, other[k]) for k in other.keys()]
        else:
            pairs = list(other)
        pairs.extend(kwargs.items())
        self._call("dict-update", [(_pack(k), _pack(v)) for k, v in pairs])

    def clear(self):
        self._call("dict-clear")

    def copy(self):
        """The entries as a plain ``dict``."""
        return dict(self.items())

    def increment(self, key, delta=1):
        """Adds ``delta`` to the integer at ``key`` (a missing key counts as 0), atomically;
        the new value."""
        return self._call("dict-increment", (_pack(key), delta))

    def compare_and_swap(self, key, expected, new):
        """Stores ``new`` at ``key`` if its value is ``expected`` (:data:`ABSENT`: if the
        key is absent), atomically; whether it did."""
        exp = None if expected is ABSENT else _pack(expected)
        return bool(self._call("dict-compare-and-swap", (_pack(key), exp, _pack(new))))

    def _error(self, op, f):
        if f.kind == "missing" and op == "dict-popitem":
            return KeyError("popitem(): dictionary is empty")
        return _common_error(self, op, f)


class List(_Shared):
    """A ``Manager().list()``: ``append``, ``extend``, ``l[i]`` and slices, ``l[i] = v``,
    ``del l[i]``, ``len``, iteration, ``in``, ``pop``, ``insert``, ``remove``, ``index``,
    ``count``, ``clear``, ``copy``, ``+=``."""

    __slots__ = ()
    _tag = "wasmpool:list"

    def append(self, value):
        self._call("list-append", _pack(value))

    def extend(self, values):
        self._call("list-extend", [_pack(v) for v in values])

    def __iadd__(self, values):
        self.extend(values)
        return self

    def __getitem__(self, index):
        if isinstance(index, slice):
            if index.step is None or index.step == 1:
                return [
                    _unpack(v)
                    for v in self._call("list-slice", (_opt_index(index.start), _opt_index(index.stop)))
                ]
            return self.copy()[index]
        return _unpack(self._call("list-get", _index(index)))

    def __setitem__(self, index, value):
        if isinstance(index, slice):
            raise TypeError("a shared list does not support slice assignment")
        self._call("list-set", (_index(index), _pack(value)))

    def __delitem__(self, index):
        if isinstance(index, slice):
            raise TypeError("a shared list does not support slice deletion")
        try:
            self._call("list-pop", _index(index))
        except IndexError:
            raise IndexError("list assignment index out of range") from None

    def __len__(self):
        return self._call("list-len")

    def __iter__(self):
        return iter(self.copy())

    def __contains__(self, value):
        return value in self.copy()

    def pop(self, index=-1):
        return _unpack(self._call("list-pop", _index(index)))

    def insert(self, index, value):
        self._call("list-insert", (_index(index), _pack(value)))

    def remove(self, value):
        self._call("list-remove", _pack(value))

    def index(self, value):
        try:
            return self._call("list-index", _pack(value))
        except ValueError:
            raise ValueError(f"{value!r} is not in list") from None

    def count(self, value):
        return self.copy().count(value)

    def clear(self):
        self._call("list-clear")

    def copy(self):
        """The values as a plain ``list``."""
        return [_unpack(v) for v in self._call("list-items")]


def _index(i):
    if isinstance(i, bool) or not hasattr(i, "__index__"):
        raise TypeError(f"list indices must be integers or slices, not {type(i).__name__}")
    i = i.__index__()
    return max(-(2**63), min(i, 2**63 - 1))


def _opt_index(i):
    return None if i is None else _index(i)


#: The object class of each handle tag.
KINDS = {
    cls._tag: cls
    for cls in (Queue, Connection, Lock, RLock, Semaphore, Condition, Event, Barrier, Dict, List)
}

_msgpack.register_handles(_Shared, KINDS)
