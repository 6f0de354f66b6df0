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

The module's top level runs once, when the component is built (componentize-py snapshots the
initialised interpreter): import everything a task needs at the top of the module. A module
imported only inside a function is not bundled and is missing at run time.
"""

from ._registry import TASKS, init, task, task_names

__all__ = ["task", "init", "task_names", "TASKS"]
