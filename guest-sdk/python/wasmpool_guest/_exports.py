"""The component's exports (the WIT world's `tasks` interface), over the registry, and the
imports the SDK's other parts use (`objects`, `host.process-info`).

Imported only inside the component: `wit_world` is the package componentize-py generates
from ``wit/wasmpool.wit`` when it builds the module.
"""

import dataclasses
import sys
from array import array

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import host, types
from wit_world.exports import batch_packed as _batch_packed
from wit_world.imports import objects as wit_objects

from . import _batch as _batch_mod
from . import _identity, _registry, _vector, objects

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


def _progress(done):
    host.batch_progress([Err(_error(o)) if isinstance(o, _registry.TaskFailure) else Ok(o) for o in done])


_batch = None


def _before_effect():
    # Before every call to `objects` inside a batch (see `_batch`).
    b = _batch
    if b is not None:
        b.before_effect()


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
        data, ends, errors, _ = _call_batch(task, items.data, items.ends)
        return types.BatchOutcome(types.Packed(data, ends), errors)


class BatchBytes(exports.BatchBytes):
    """The `batch-bytes` interface: `call-batch` with the item ends as bytes, which cross
    into and out of the interpreter in one copy each rather than one int object per item."""

    def call_batch_bytes(self, task, data, ends):
        out, out_ends, errors, _ = _call_batch(task, data, _parse_ends(ends))
        return (out, _pack_ends(out_ends), errors)


class BatchPacked(exports.BatchPacked):
    """The `batch-packed` interface: `call-batch-bytes` whose items, when each is one
    number, come as one native array, and whose results, when they are all of one kind
    that packs (ints, floats, bools, None), go back as one that the host encodes (see
    :func:`._vector.unpack_items` and :func:`._vector.pack_results`)."""

    def call_batch_packed(self, task, items):
        if isinstance(items, _batch_packed.BatchItems_Encoded):
            data, ends = items.value
            batch = (data, _parse_ends(ends), None)
        else:
            kind = "ints" if isinstance(items, _batch_packed.BatchItems_Ints) else "floats"
            args = _vector.unpack_items(kind, items.value)
            if args is None:
                raise ValueError(f"packed items of kind {kind} cannot be read here")
            batch = (b"", None, args)
        out, out_ends, errors, packed = _call_batch(task, *batch, pack=True)
        if packed is None:
            return (_batch_packed.BatchResults_Encoded((out, _pack_ends(out_ends))), errors)
        kind, payload = packed
        return (_PACKED[kind](payload), errors)


def _parse_ends(ends):
    if len(ends) % _END.itemsize:
        raise ValueError("the batch's ends are not whole u32s")
    parsed = array(_END.typecode)
    parsed.frombytes(ends)
    if _SWAP:
        parsed.byteswap()
    return parsed.tolist()


def _pack_ends(out_ends):
    packed = array(_END.typecode, out_ends)
    if _SWAP:
        packed.byteswap()
    return packed.tobytes()


_PACKED = {
    "ints": _batch_packed.BatchResults_Ints,
    "uints": _batch_packed.BatchResults_Uints,
    "floats": _batch_packed.BatchResults_Floats,
    "bools": _batch_packed.BatchResults_Bools,
    "nils": _batch_packed.BatchResults_Nils,
}


# The ends are u32s, little-endian: an array type of four bytes.
_END = array("I")
_SWAP = sys.byteorder != "little"


def _call_batch(task, data, ends, args=None, pack=False):
    """Runs a batch (its items ``data`` and ``ends``, or ``args``: see
    :class:`._batch.Batch`): ``(results' data, their ends, [(index, task-error)], packed)``,
    with ``packed`` the results as ``(kind, payload)`` instead when ``pack`` is asked and
    they pack (the data and ends are then empty)."""
    global _batch
    count = len(args[0]) if args is not None else len(ends)
    if count > 1:
        # Says that this guest reports its progress: one host call per batch.
        host.batch_progress([])
    if _registry.TASKS.get(task) is None:
        failure = types.TaskError_UnknownTask(task)
        return b"", [0] * count, [(i, failure) for i in range(count)], None
    b = _batch_mod.Batch(task, data, ends, _progress, pack, args)
    _batch = b
    try:
        out, out_ends, errors = b.run()
    finally:
        _batch = None
        _registry._flush()
    return out, out_ends, [(i, _error(f)) for i, f in errors], b.packed
