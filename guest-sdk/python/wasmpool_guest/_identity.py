"""Makes ``os.getpid()``, ``os.getppid()``, ``multiprocessing.current_process()`` and
``multiprocessing.cpu_count()`` answer inside a task as they do in a Python worker process.

The embedded interpreter has no process of its own (WASI's CPython says pid 42,
``MainProcess`` and one CPU). The host tells: the WIT world's ``host.process-info`` gives
the worker's pid, its parent's (the host program's) and the process name (``Process-1``,
``PoolWorker-3``, or the name given to the ``Process``); the ``WASMPOOL_CPU_COUNT``
environment variable every instance is given holds the host's CPU count.

Imported before the user's module (the build's entry module does it), so even
``from os import getpid`` at the top of it gets the worker's answer. Everything is asked
at call time: the interpreter is snapshotted at build time, when there is no worker yet (a
call made then answers what the plain interpreter would).
"""

import os

_original_getpid = os.getpid
_original_getppid = getattr(os, "getppid", None)
_original_cpu_count = os.cpu_count

#: Answers ``(pid, ppid, name)`` of the worker, or raises if there is none (set by the
#: component's exports; ``None`` outside a component).
provider = None

# (pid, ppid) once known: fixed for the instance's life (an instance never changes process).
_ids = None


def _identity():
    global _ids
    if provider is None:
        return None
    try:
        pid, ppid, name = provider()
    except Exception:  # noqa: BLE001 - no host to ask (at build time)
        return None
    _ids = (pid, ppid)
    return pid, ppid, name


def getpid():
    """The worker process's id."""
    if _ids is not None:
        return _ids[0]
    ident = _identity()
    return _original_getpid() if ident is None else ident[0]


def getppid():
    """The parent's id: the host program that started the worker."""
    if _ids is not None:
        return _ids[1]
    ident = _identity()
    if ident is not None:
        return ident[1]
    return 1 if _original_getppid is None else _original_getppid()


def process_name():
    """The worker's process name, as the host names it now (it may change between
    calls: a pool worker runs a ``Process``'s task under that name)."""
    ident = _identity()
    return "MainProcess" if ident is None else ident[2]


def cpu_count():
    """The host's CPU count (``os.cpu_count()`` of the host program)."""
    value = os.environ.get("WASMPOOL_CPU_COUNT")
    if value is not None:
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n > 0:
            return n
    return _original_cpu_count()


def _patch_multiprocessing():
    try:
        from multiprocessing import process as mp_process
    except Exception:  # noqa: BLE001 - no multiprocessing: nothing to patch
        return
    current = getattr(mp_process, "_current_process", None)
    if current is None:
        return
    base = type(current)

    class WorkerProcess(base):
        """The current process of a task: a worker, named by the host."""

        @property
        def name(self):
            if getattr(self, "_wasmpool_name", None) is not None:
                return self._wasmpool_name
            return process_name()

        @name.setter
        def name(self, value):
            if not isinstance(value, str):
                raise TypeError("name must be a string")
            self._wasmpool_name = value

    WorkerProcess.__name__ = base.__name__
    WorkerProcess.__qualname__ = base.__qualname__
    try:
        current.__class__ = WorkerProcess
    except TypeError:
        pass


def install():
    """Patches ``os`` and ``multiprocessing`` (once)."""
    if getattr(os.getpid, "__module__", None) == __name__:
        return
    os.getpid = getpid
    os.getppid = getppid
    os.cpu_count = cpu_count
    if hasattr(os, "process_cpu_count"):
        os.process_cpu_count = cpu_count
    # `multiprocessing.cpu_count()` asks `os.cpu_count()` when called: nothing more to do.
    _patch_multiprocessing()


install()
