"""The component's exports (the WIT world's `tasks` interface), over the registry, and the
imports the SDK's other parts use (`objects`, `host.process-info`).

Imported only inside the component: `wit_world` is the package componentize-py generates
from ``wit/wasmpool.wit`` when it builds the module.
"""

import dataclasses

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import host, types
from wit_world.imports import objects as wit_objects

from . import _identity, _registry, objects

_KINDS = {
    "failed": types.TaskError_Failed,
    "unknown-task": types.TaskError_UnknownTask,
    "bad-args": types.TaskError_BadArgs,
}


def _error(failure):
    return _KINDS[failure.kind](failure.message)


# ---- the worker's identity ----------------------------------------------------------


def _process_info():
    info = host.process_info()
    return info.pid, info.ppid, info.name


_identity.provider = _process_info


# ---- batch progress (see `batch-progress` in the WIT world) -------------------------


class _Batch:
    """The running `call-batch`'s outcomes since its last progress report."""

    __slots__ = ("out", "ends", "errors", "effect")

    def __init__(self):
        self.out = bytearray()
        self.ends = []
        self.errors = []
        self.effect = False

    def report(self):
        """Hands the outcomes recorded since the last report to the host, which keeps
        them: a later trap in this batch never runs those items again."""
        if not self.ends:
            return
        errors = dict(self.errors)
        done = []
        start = 0
        for i, end in enumerate(self.ends):
            e = errors.get(i)
            done.append(Err(e) if e is not None else Ok(bytes(self.out[start:end])))
            start = end
        self.out = bytearray()
        self.ends = []
        self.errors = []
        host.batch_progress(done)


_batch = None


def _before_effect():
    # Before every call to `objects` inside a batch: the items finished so far are
    # reported (so the host knows which item makes the call), and the running item is
    # marked as having a side effect (so it is reported as soon as it finishes).
    b = _batch
    if b is not None:
        b.report()
        b.effect = True


# ---- objects ------------------------------------------------------------------------


def _camel(op):
    return "".join(part.capitalize() for part in op.split("-"))


def _request_class(op):
    name = _camel(op)
    cls = getattr(wit_objects, "Request_" + name, None)
    if cls is not None:
        return cls, False
    cls = getattr(wit_objects, "MoreRequest_" + name, None)
    if cls is not None:
        return cls, True
    raise ValueError(f"no object operation `{op}`")


_REQUESTS = {}
_FAULT_KINDS = {}


def _fault(e):
    name = type(e).__name__.split("_", 1)[-1]
    kind = _FAULT_KINDS.get(name)
    if kind is None:
        kind = "".join("-" + c.lower() if c.isupper() else c for c in name).lstrip("-")
        _FAULT_KINDS[name] = kind
    message = getattr(e, "value", "")
    return objects.ObjectFault(kind, message if isinstance(message, str) else "")


def _answer(r):
    if isinstance(r, wit_objects.MoreResponse_RunAction):
        return objects.RunAction(r.value)
    if isinstance(r, wit_objects.MoreResponse_Plain):
        r = r.value
    if isinstance(r, wit_objects.Response_Unit):
        return None
    return r.value


class _Transport:
    """Carries the shared objects' operations to the host through the `objects` import."""

    def invoke(self, handle, op, arg, timeout_ms):
        entry = _REQUESTS.get(op)
        if entry is None:
            cls, more = _request_class(op)
            entry = (cls, more, bool(dataclasses.fields(cls)))
            _REQUESTS[op] = entry
        cls, more, has_value = entry
        if op == "dict-compare-and-swap":
            req = cls(wit_objects.Swap(*arg))
        elif has_value:
            req = cls(arg)
        else:
            req = cls()
        target = wit_objects.Handle(handle[0], handle[1])
        _before_effect()
        try:
            if more:
                r = wit_objects.invoke_more(target, req, timeout_ms)
            else:
                r = wit_objects.invoke(target, req, timeout_ms)
        except Err as e:
            raise _fault(e.value) from None
        return _answer(r)


objects.transport = _Transport()


# ---- the exports --------------------------------------------------------------------


class Tasks(exports.Tasks):
    """The `tasks` interface: listing, init, one call and a batch of calls."""

    def list_tasks(self):
        return _registry.task_names()

    def init(self):
        try:
            _registry.run_inits()
        except _registry.TaskFailure as f:
            raise Err(f.message) from None

    def call(self, task, args):
        try:
            return Ok(_registry.call(task, args))
        except _registry.TaskFailure as f:
            return Err(_error(f))
        except BaseException as e:  # noqa: BLE001 - an SDK fault must not trap the worker
            return Err(types.TaskError_Failed(_registry.describe(e)))

    def call_batch(self, task, items):
        global _batch
        data = items.data
        ends = items.ends
        if len(ends) > 1:
            # Says that this guest reports its progress: one host call per batch.
            host.batch_progress([])
        run = _registry.batch_caller(task)
        if run is None:
            failure = types.TaskError_UnknownTask(task)
            return types.BatchOutcome(
                types.Packed(b"", [0] * len(ends)), [(i, failure) for i in range(len(ends))]
            )
        b = _Batch()
        _batch = b
        start = 0
        try:
            for end in ends:
                b.effect = False
                try:
                    b.out += run(data, start, end)
                except _registry.TaskFailure as f:
                    b.errors.append((len(b.ends), _error(f)))
                except BaseException as e:  # noqa: BLE001 - as in `call`
                    b.errors.append((len(b.ends), types.TaskError_Failed(_registry.describe(e))))
                start = end
                b.ends.append(len(b.out))
                if b.effect:
                    # An item with side effects is reported as soon as it finishes.
                    b.report()
        finally:
            _batch = None
            _registry._flush()
        return types.BatchOutcome(types.Packed(bytes(b.out), b.ends), b.errors)
