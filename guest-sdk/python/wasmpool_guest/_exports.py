"""The component's exports (the WIT world's `tasks` interface), over the registry.

Imported only inside the component: `wit_world` is the package componentize-py generates
from ``wit/wasmpool.wit`` when it builds the module.
"""

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import types

from . import _registry

_KINDS = {
    "failed": types.TaskError_Failed,
    "unknown-task": types.TaskError_UnknownTask,
    "bad-args": types.TaskError_BadArgs,
}


def _error(failure):
    return _KINDS[failure.kind](failure.message)


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
        data = items.data
        ends = items.ends
        out = bytearray()
        out_ends = []
        errors = []
        call = _registry.call
        start = 0
        for end in ends:
            try:
                out += call(task, data[start:end])
            except _registry.TaskFailure as f:
                errors.append((len(out_ends), _error(f)))
            except BaseException as e:  # noqa: BLE001 - as in `call`
                errors.append((len(out_ends), types.TaskError_Failed(_registry.describe(e))))
            start = end
            out_ends.append(len(out))
        return types.BatchOutcome(types.Packed(bytes(out), out_ends), errors)
