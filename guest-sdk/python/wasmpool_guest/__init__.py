"""Write wasmpool tasks in Python.

A task is a plain function whose arguments and return value are MessagePack values (None,
bool, int, float, str, bytes, lists, tuples, dicts, dataclasses). Mark it with ``@task``;
``wasmpool run hello.py square 7`` builds the module into a WebAssembly component (with
componentize-py) and runs the task in a sandboxed worker process::

    from wasmpool_guest import task

    @task
    def square(x: int) -> int:
        return x * x

    @task(name="greet")
    def hello(name):
        print(f"hello, {name}")

An exception raised by a task fails it: the caller's error names the exception's type and
message and carries its traceback. ``@init`` marks a function run once in each fresh worker
instance, before its first task; an exception there fails the worker's start.

Shared objects the host made with its ``Manager`` arrive as arguments and behave as
Python's (see :mod:`wasmpool_guest.objects`): ``q.put(x)``, ``q.get(timeout=0.5)`` raising
``queue.Empty``, ``with lock:``, ``d["k"] = v``, ``conn.recv()`` raising ``EOFError``.
Type hints on a task's parameters are checked against the decoded arguments (a mismatch is
a ``bad-args`` error). Inside a task, ``os.getpid()``, ``os.getppid()``,
``multiprocessing.current_process().name`` and ``multiprocessing.cpu_count()`` answer as
in a Python worker process.

The module's top level runs once, when the component is built (componentize-py snapshots the
initialised interpreter): import everything a task needs at the top of the module. A module
imported only inside a function is not bundled and is missing at run time.
"""

from . import _identity  # noqa: F401 - patches os and multiprocessing (see its doc)
from ._registry import TASKS, init, task, task_names
from .objects import (
    ABSENT,
    Barrier,
    BoundedSemaphore,
    Condition,
    Connection,
    Dict,
    Event,
    JoinableQueue,
    List,
    Lock,
    Queue,
    RLock,
    Semaphore,
    SimpleQueue,
)

__all__ = [
    "task",
    "init",
    "task_names",
    "TASKS",
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
    "ABSENT",
]
