"""The smallest Python guest: `wasmpool run examples/py-hello/hello.py square 7` prints 49."""

import random

from wasmpool_guest import _msgpack, task


@task
def square(x: int) -> int:
    return x * x


@task(name="greet")
def hello(name: str) -> str:
    print(f"hello, {name}")
    return f"greeted {name}"


# For the tests: values cross the boundary as the Rust SDK encodes them.
@task
def echo(value):
    """Returns its argument, decoded and encoded again."""
    return value


@task
def reencode(value) -> bytes:
    """The SDK's own MessagePack bytes for its argument."""
    return _msgpack.packb(value)


class NotFound(Exception):
    pass


@task
def lookup(key: str):
    raise NotFound(f"no entry for {key!r}")


@task
def draw() -> float:
    """A random number: each worker instance draws its own sequence."""
    return random.random()
