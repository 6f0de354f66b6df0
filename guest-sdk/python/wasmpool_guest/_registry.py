"""Task registration and calling, independent of the component bindings (so it runs, and is
tested, in any Python)."""

import inspect
import sys
import traceback
import typing

from . import _hints, _msgpack

#: The registered tasks, by name, in registration order.
TASKS = {}
_INITS = []


class TaskFailure(Exception):
    """Why a call produced no value: ``kind`` is ``"failed"``, ``"unknown-task"`` or
    ``"bad-args"`` (the WIT world's ``task-error`` cases)."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind
        self.message = message


class _Task:
    __slots__ = ("name", "func", "params", "min_args", "max_args", "signature", "checks")

    def __init__(self, name, func):
        self.name = name
        self.func = func
        params = []
        min_args = 0
        max_args = 0
        try:
            sig = inspect.signature(func)
        except (TypeError, ValueError):
            sig = None
        checks = []
        if sig is None:
            max_args = None
        else:
            hints = _resolved_hints(func)
            for p in sig.parameters.values():
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                    annotation = hints.get(p.name, p.annotation)
                    params.append((p.name, _hint(annotation)))
                    check = _hints.checker(annotation)
                    if check is not None:
                        checks.append((max_args, check))
                    max_args += 1
                    if p.default is p.empty:
                        min_args += 1
                elif p.kind is p.VAR_POSITIONAL:
                    max_args = None
                elif p.kind is p.KEYWORD_ONLY and p.default is p.empty:
                    raise TypeError(
                        f"task `{name}`: keyword-only parameter `{p.name}` has no default; "
                        "tasks take positional arguments"
                    )
        self.params = params
        self.min_args = min_args
        self.max_args = max_args
        #: `(index, check)` for each parameter whose type hint is checked.
        self.checks = tuple(checks)

    def arity_error(self, got):
        n = len(self.params)
        wanted = ", ".join(f"{p}: {t}" if t else p for p, t in self.params)
        if self.max_args is None:
            count = f"at least {self.min_args}"
        elif self.min_args != n:
            count = f"{self.min_args} to {n}"
        else:
            count = str(n)
        plural = "" if count == "1" else "s"
        return TaskFailure(
            "bad-args",
            f"task `{self.name}` takes {count} argument{plural} ({wanted}), got {got}",
        )


def _hint(annotation):
    if annotation is inspect.Parameter.empty:
        return ""
    return _hints.describe(annotation)


def _resolved_hints(func):
    # Hints written as strings (`from __future__ import annotations`) are resolved; one
    # that cannot be is left as written (and not checked).
    try:
        return typing.get_type_hints(func)
    except Exception:  # noqa: BLE001 - an unresolvable hint is not checked
        return {}


def _register(func, name):
    if not callable(func):
        raise TypeError(f"@task applies to a function, not {type(func).__name__}")
    name = name or func.__name__
    if name in TASKS:
        raise ValueError(f"two tasks are named `{name}`")
    TASKS[name] = _Task(name, func)
    return func


def task(func=None, *, name=None):
    """Registers ``func`` as a task, named ``name`` or the function's own name.

    Use it bare (``@task``) or with a name (``@task(name="other")``). The function is
    returned unchanged, so it can still be called directly.
    """
    if func is None:
        return lambda f: _register(f, name)
    if isinstance(func, str) and name is None:
        # @task("name"): the name given positionally.
        return lambda f: _register(f, func)
    return _register(func, name)


def init(func):
    """Registers ``func`` (no arguments) to run once in each fresh worker instance before
    its first task. Several are run in registration order."""
    _INITS.append(func)
    return func


def task_names():
    """The names of the registered tasks, in registration order."""
    return list(TASKS)


def describe(exc, tb=None):
    """An exception as a task's error: ``Type: message``, then its traceback (from frame
    ``tb``, by default the exception's own)."""
    kind = type(exc)
    module = kind.__module__
    qualname = kind.__qualname__
    if module not in ("builtins", "__main__"):
        qualname = f"{module}.{qualname}"
    text = str(exc)
    head = f"{qualname}: {text}" if text else qualname
    if isinstance(exc, ImportError):
        head += (
            " (the component holds only the modules imported when it was built: a module"
            " first imported inside a function is missing; import it at the top of the module)"
        )
    if tb is None:
        tb = exc.__traceback__
    text = "".join(traceback.format_exception(kind, exc, tb)).rstrip("\n")
    return f"{head}\n\n{text}"


def _reseed():
    # The module's top level ran when the component was built, and the interpreter was
    # snapshotted then: `random` was seeded once, at build time, for every instance. Each
    # instance draws its own seed, as each Python worker process does.
    rnd = sys.modules.get("random")
    if rnd is not None:
        try:
            rnd.seed()
        except Exception:  # noqa: BLE001 - no entropy: keep the snapshot's state
            pass


def _line_buffered():
    # A line reaches the host when it is complete, as the Rust SDK's stdout (a LineWriter)
    # writes it: so what the finished items of a batch printed is out even if a later one
    # traps, without a flush after every item.
    for stream in (sys.stdout, sys.stderr):
        try:
            if not stream.line_buffering:
                stream.reconfigure(line_buffering=True)
        except Exception:  # noqa: BLE001 - a replaced stream: leave it as it is
            pass


def run_inits():
    """Runs the ``@init`` functions; raises :class:`TaskFailure` with the exception's text."""
    _line_buffered()
    _reseed()
    for func in _INITS:
        try:
            func()
        except BaseException as e:  # noqa: BLE001 - every failure is the init's error
            raise TaskFailure("failed", f"init `{func.__name__}` failed: {describe(e)}") from None
        finally:
            _flush()


def _flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed stream must not fail the task
            pass


def decode_args(t, args):
    """The positional arguments of one call: ``args`` must be one MessagePack array."""
    n, reader = _msgpack.unpack_array_start(args)
    if n is None:
        raise TaskFailure(
            "bad-args", f"task `{t.name}` expects its arguments as one MessagePack array"
        )
    if n < t.min_args or (t.max_args is not None and n > t.max_args):
        raise t.arity_error(n)
    try:
        values = [_msgpack.unpack_next(reader) for _ in range(n)]
    except _msgpack.DecodeError as e:
        raise TaskFailure("bad-args", f"task `{t.name}`: cannot decode its arguments: {e}") from None
    if reader.pos != len(args):
        raise TaskFailure("bad-args", f"task `{t.name}`: bytes follow its arguments")
    for i, check in t.checks:
        if i >= n:
            break
        try:
            values[i] = check(values[i])
        except _hints.Mismatch as m:
            raise _mismatch(t, i, m) from None
    return values


def _mismatch(t, i, m):
    name, ty = t.params[i]
    return TaskFailure(
        "bad-args",
        f"task `{t.name}`: argument {i + 1} (`{name}: {ty}`): expected {ty}, got {m}",
    )


def call(name, args, flush=True):
    """Runs task ``name`` on MessagePack-encoded ``args``; its encoded result, or raises
    :class:`TaskFailure`. ``flush``: write out what stdout and stderr hold back when the
    task ends (a batch does it once, at its end: the streams are line-buffered, see
    :func:`run_inits`)."""
    t = TASKS.get(name)
    if t is None:
        raise TaskFailure("unknown-task", name)
    values = decode_args(t, args)
    try:
        result = t.func(*values)
    except BaseException as e:  # noqa: BLE001 - SystemExit too is the task's error
        # The traceback starts at the task's own frame, not this one.
        tb = e.__traceback__
        raise TaskFailure("failed", describe(e, tb.tb_next if tb else None)) from None
    finally:
        if flush:
            _flush()
    try:
        return _msgpack.packb(result)
    except _msgpack.EncodeError as e:
        raise encode_failure(name, e) from None


def encode_failure(name, e):
    """The failure of a task whose result MessagePack cannot hold."""
    return TaskFailure("failed", f"task `{name}`: cannot encode its result: {e}")


def _all_of(kinds):
    def check(values, kind=None):
        if kind is not None:
            return values if kind in kinds else None
        return values if set(map(type, values)) <= kinds else None

    return check


def whole_batch_caller(name):
    """``(func, check)`` for a task that can be mapped over a whole batch of single
    arguments at once (see :mod:`._batch`): ``check(values, kind=None)`` answers the values
    as the task's type hint takes them, or None where some value does not fit it (the batch
    then goes item by item, which words each mismatch); ``kind``, when given, is the type of
    every value. None for a task of other parameters."""
    t = TASKS.get(name)
    if t is None or t.min_args > 1 or (t.max_args is not None and t.max_args < 1):
        return None
    hint_check = t.checks[0][1] if t.checks and t.checks[0][0] == 0 else None
    if hint_check is None:
        return t.func, lambda values, kind=None: values
    if hint_check is _hints._check_int:
        return t.func, _all_of({int})
    if hint_check is _hints._check_float:
        return t.func, _all_of({int, float})

    def check(values, kind=None):
        try:
            return [hint_check(v) for v in values]
        except _hints.Mismatch:
            return None

    return t.func, check


def batch_caller(name):
    """A function ``run(data, start, end)`` that runs task ``name`` on the arguments in
    ``data[start:end]`` and returns its encoded result (or raises :class:`TaskFailure`),
    as :func:`call` does, for the items of one batch. A task of one parameter given one
    argument (what ``map`` sends) takes a fast path: the argument is decoded in place,
    with no copy of the item. ``None`` if there is no such task."""
    t = TASKS.get(name)
    if t is None:
        return None
    func = t.func
    single = t.min_args <= 1 and (t.max_args is None or t.max_args >= 1)
    check = t.checks[0][1] if t.checks and t.checks[0][0] == 0 else None
    reader = _msgpack._Reader(b"")
    unpack = _msgpack._unpack
    packb = _msgpack.packb
    decode_error = _msgpack.DecodeError
    # The unsigned ints `map` over a range sends: marker, then the big-endian bytes.
    uint_sizes = {0xCC: 2, 0xCD: 3, 0xCE: 5, 0xCF: 9}
    from_bytes = int.from_bytes

    def run(data, start, end):
        if not single or end - start < 2 or data[start] != 0x91:
            return call(name, data[start:end], flush=False)
        m = data[start + 1]
        size = end - start - 1
        if m < 0x80 and size == 1:
            value = m  # a small non-negative int
        elif uint_sizes.get(m) == size:
            value = from_bytes(data[start + 2 : end], "big")
        else:
            reader.data = data
            reader.pos = start + 1
            try:
                value = unpack(reader, 1)
            except decode_error:
                value = reader  # malformed: the general path words the error
            if value is reader or reader.pos != end:
                return call(name, data[start:end], flush=False)
        if check is not None:
            try:
                value = check(value)
            except _hints.Mismatch as m:
                raise _mismatch(t, 0, m) from None
        try:
            result = func(value)
        except BaseException as e:  # noqa: BLE001 - as in `call`
            tb = e.__traceback__
            raise TaskFailure("failed", describe(e, tb.tb_next if tb else None)) from None
        try:
            return packb(result)
        except _msgpack.EncodeError as e:
            raise encode_failure(name, e) from None

    return run
