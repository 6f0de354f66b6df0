"""Python tasks for wasmpool's tests (tests/python_guests.rs): shared objects from Python,
the worker's identity, type-hint checks and limits. Each object task does what a Python
program does with the object and answers what it saw, exceptions included, by name."""

import multiprocessing
import os
import queue
import threading
import time
from os import getpid  # bound at the top: still the worker's pid (the SDK patches first)
from typing import Optional

from wasmpool_guest import (
    ABSENT,
    Barrier,
    Condition,
    Connection,
    Dict,
    Event,
    List,
    Lock,
    Queue,
    RLock,
    Semaphore,
    task,
)


def raised(f, *args, **kwargs):
    """The name of the exception ``f(*args)`` raises, or ``"ok: <value>"``."""
    try:
        value = f(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - the name is the answer
        return type(e).__name__
    return f"ok: {value!r}"


# ---- shared objects ----


@task
def queue_ops(q: Queue, bounded: Queue, joinable: Queue, closing: Queue) -> list:
    seen = []
    q.put(1)
    q.put_nowait("two")
    seen.append(q.qsize())
    seen.append(q.get())
    seen.append(q.get_nowait())
    seen.append(q.empty())
    seen.append(raised(q.get, timeout=0.1))
    seen.append(raised(q.get, block=False))
    seen.append(raised(q.get_nowait))
    seen.append(raised(q.get, timeout=-1))
    bounded.put("x")
    seen.append(bounded.full())
    seen.append(bounded.maxsize)
    seen.append(raised(bounded.put, "y", timeout=0.1))
    seen.append(raised(bounded.put_nowait, "y"))
    seen.append(raised(bounded.put, "y", False))
    joinable.put("job")
    seen.append(joinable.get())
    joinable.task_done()
    joinable.join()
    seen.append(raised(joinable.task_done))
    closing.close()
    seen.append(raised(closing.put, 1))
    # Left for the host to read.
    q.put({"n": [1, -2, 3.5], "b": b"\x00\xff", "none": None})
    return seen


@task
def pipe_ops(a: Connection, b: Connection) -> list:
    seen = []
    a.send({"k": 1})
    seen.append(b.poll(5))
    seen.append(b.recv())
    seen.append(b.poll())
    b.send_bytes(b"xabcx", 1, 3)
    seen.append(a.recv_bytes().decode())
    b.send("not bytes")
    seen.append(raised(a.recv_bytes))
    a.close()
    seen.append(raised(a.send, 1))
    seen.append(a.closed)
    return seen


@task
def pipe_after_close(b: Connection) -> list:
    """The end whose other end is closed everywhere."""
    return [raised(b.recv), raised(b.send, 1), b.closed]


@task
def recv_until_eof(conn: Connection) -> list:
    """Reads until the other end is closed, as a Python pipe reader does."""
    got = []
    while True:
        try:
            got.append(conn.recv())
        except EOFError:
            return got


@task
def lock_ops(lock: Lock, rlock: RLock, sem: Semaphore, bsem: Semaphore) -> list:
    seen = []
    with lock:
        seen.append(lock.locked())
        seen.append(lock.acquire(False))
        seen.append(lock.acquire(timeout=0.05))
    seen.append(lock.locked())
    seen.append(raised(lock.release))
    seen.append(raised(lock.acquire, False, 1))
    with rlock:
        with rlock:
            seen.append(rlock.locked())
    seen.append(raised(rlock.release))
    seen.append(sem.acquire())
    seen.append(sem.acquire(blocking=True))
    seen.append(sem.acquire(timeout=0.1))
    seen.append(sem.get_value())
    sem.release(2)
    seen.append(sem.get_value())
    seen.append(raised(bsem.release))
    return seen


@task
def condition_ops(cond: Condition) -> list:
    seen = [raised(cond.wait, 0.01), raised(cond.notify)]
    with cond:
        seen.append(cond.wait(0.05))
        seen.append(cond.wait_for(lambda: True))
        seen.append(cond.wait_for(lambda: False, timeout=0.05))
        cond.notify()
        cond.notify_all()
    return seen


@task
def event_wait(ev: Event, timeout: Optional[float]) -> bool:
    return ev.wait(timeout)


@task
def event_set(ev: Event) -> bool:
    ev.set()
    return ev.is_set()


@task
def barrier_wait(b: Barrier, timeout: Optional[float]):
    """This party's index, or the exception's name."""
    try:
        return b.wait(timeout)
    except threading.BrokenBarrierError:
        return "BrokenBarrierError"


@task
def barrier_ops(b: Barrier) -> list:
    """On a barrier of one party: its properties, and an action."""
    ran = []
    seen = [b.parties, b.n_waiting, b.broken]
    seen.append(b.wait(action=lambda: ran.append("action")))
    seen.append(ran)
    seen.append(raised(b.wait, action=lambda: 1 / 0))
    seen.append(b.broken)
    b.reset()
    seen.append(b.broken)
    b.abort()
    seen.append(raised(b.wait))
    return seen


@task
def dict_ops(d: Dict) -> list:
    seen = []
    d["a"] = 1
    d[2] = "two"
    d[(1, 2)] = [3]
    seen.append(d["a"])
    seen.append(d[2])
    seen.append(d[[1, 2]])
    seen.append(raised(d.__getitem__, "missing"))
    seen.append("a" in d)
    seen.append("zz" in d)
    seen.append(len(d))
    seen.append(d.get("zz", "dflt"))
    seen.append(d.keys())
    seen.append(sorted(map(str, d.values())))
    seen.append(len(d.items()))
    seen.append(list(d))
    del d[2]
    seen.append(raised(d.__delitem__, 2))
    seen.append(d.pop("a"))
    seen.append(d.pop("a", "gone"))
    seen.append(raised(d.pop, "a"))
    seen.append(d.setdefault("s", 5))
    seen.append(d.setdefault("s", 6))
    d.update({"u": 1}, v=2)
    d.update([("w", 3)])
    seen.append(d.popitem())
    seen.append(d.increment("count"))
    seen.append(d.increment("count", 41))
    seen.append(d.compare_and_swap("count", 42, 43))
    seen.append(d.compare_and_swap("count", 42, 44))
    seen.append(d.compare_and_swap("fresh", ABSENT, "new"))
    del d[(1, 2)]
    seen.append(d.copy())
    d.clear()
    seen.append(len(d))
    seen.append(raised(d.popitem))
    d["final"] = {"nested": [1, 2]}
    return seen


@task
def list_ops(l: List) -> list:
    seen = []
    l.append(1)
    l.extend([2, 3, 4])
    l += [5]
    seen.append(len(l))
    seen.append(l[0])
    seen.append(l[-1])
    seen.append(l[1:3])
    seen.append(l[::2])
    seen.append(l[-2:])
    seen.append(raised(l.__getitem__, 10))
    l[0] = 10
    del l[1]
    seen.append(l.copy())
    seen.append(l.pop())
    seen.append(l.pop(0))
    l.insert(0, "first")
    l.insert(100, "last")
    l.remove("last")
    seen.append(raised(l.remove, "nope"))
    seen.append(l.index(3))
    seen.append(raised(l.index, "nope"))
    seen.append(3 in l)
    seen.append(l.count(3))
    seen.append(list(l))
    seen.append(raised(l.pop, 99))
    l.clear()
    seen.append(len(l))
    l.append("end")
    return seen


@task
def worker(q):
    """A seed-style worker: no hints, the queue used as Python's."""
    q.put(os.getpid())


@task
def pass_on(q: Queue, d: Dict) -> str:
    """Stores the queue in the dict, takes it out again and puts through the copy."""
    d["q"] = q
    again = d["q"]
    again.put("via the dict")
    return type(again).__name__


@task
def use_stashed(d: Dict, key: str) -> int:
    """Puts 7 on the queue a Rust task stashed in the dict."""
    d[key].put(7)
    return 7


@task
def check_entries(d: Dict, prefix: str, n: int) -> list:
    """Which of `prefix + str(i): i` for i in 0..n are not in the dict byte for byte (a
    compare-and-swap of a value with itself succeeds only if both encodings are equal)."""
    return [i for i in range(n) if not d.compare_and_swap(f"{prefix}{i}", i, i)]


@task
def check_values(d: Dict, expected: dict) -> list:
    """The keys of `expected` whose value is not the dict's, byte for byte."""
    return [k for k, v in expected.items() if not d.compare_and_swap(k, v, v)]


# ---- identity ----


@task
def whoami() -> list:
    return [
        os.getpid(),
        getpid(),
        os.getppid(),
        multiprocessing.current_process().name,
        multiprocessing.cpu_count(),
        os.cpu_count(),
    ]


# ---- type hints ----


@task
def typed(
    a: int,
    b: float,
    c: str,
    d: bytes,
    e: bool,
    f: list[int],
    g: dict[str, int],
    h: Optional[int],
    i: tuple[int, str],
) -> list:
    return [a, b, c, list(d), e, f, g, h, list(i), type(i).__name__]


# ---- limits ----


@task
def spin() -> int:
    n = 0
    while True:
        n += 1


@task
def hog(mib: int) -> int:
    blocks = [bytearray(1 << 20) for _ in range(mib)]
    return len(blocks)


@task
def flood(lines: int) -> int:
    for i in range(lines):
        print("x" * 100, i)
    return lines


@task
def late_import() -> str:
    import colorsys  # noqa: F401 - not imported at the top: not in the component

    return "imported"


@task
def fails() -> None:
    def inner():
        raise KeyError("deep")

    inner()


# Kept referenced so the names above are not flagged as unused.
_ = queue


# ---- benchmarks (runtime/benches/compare.rs) ----


@task
def pid_after(ms: int) -> int:
    """Sleeps ``ms`` milliseconds; the worker's pid."""
    time.sleep(ms / 1000)
    return os.getpid()


@task
def counted(runs: Dict, x: int, bad: int) -> int:
    """Counts a run of item ``x`` in ``runs`` (a side effect that must happen once); spins
    forever (until the time limit) if ``x`` is ``bad``."""
    runs.increment(f"run:{x}")
    if x == bad:
        while True:
            pass
    return x


@task
def counted_some(runs: Dict, x: int, every: int) -> int:
    """Counts a run of item ``x`` in ``runs`` when ``x`` is a multiple of ``every`` (so a
    batch mixes items with and without a side effect); answers ``3 * x``."""
    if x % every == 0:
        runs.increment(f"run:{x}")
    return 3 * x


@task
def cube_or_fail(x):
    """For a `map` in large chunks: ints of every width in and out, floats out for the
    negative ones, and an exception every 1009th item."""
    if x % 1009 == 5:
        raise ValueError(f"no {x}")
    if x < 0:
        return x / 4
    return x * x * x


@task
def of_one_kind(x):
    """For a `map` in chunks of 100: results of one kind a chunk (ints, floats, bools,
    None, ints past the s64s, ints that fit neither s64s nor u64s, some past 64 bits,
    strings, ints and floats mixed), an exception every 97th item; float arguments give
    floats."""
    if x % 97 == 5:
        raise ValueError(f"no {x}")
    if type(x) is float:
        return x * 1.5
    kind = (x // 100) % 9
    if kind == 0:
        return x * x if x % 2 else -x * x
    if kind == 1:
        return x / 8
    if kind == 2:
        return x % 3 == 0
    if kind == 3:
        return None
    if kind == 4:
        return 2**63 + x
    if kind == 5:
        return -x if x % 2 else 2**63 + x
    if kind == 6:
        return 2**64 + x if x % 50 == 7 else x
    if kind == 7:
        return str(x)
    return x if x % 2 else float(x)
