"""Checking a task's decoded arguments against its parameters' type hints.

Exact and simple, as the Rust SDK's typed parameters are: ``int`` takes an integer (not a
bool), ``float`` an integer or a float, ``str``, ``bytes``, ``bool`` and ``None`` their own
values, ``list``/``list[X]``, ``dict``/``dict[K, V]``, ``tuple``/``tuple[X, ...]``/
``tuple[X, Y]`` (an array, handed over as a tuple), ``Optional[X]``/``X | None``/``Union``,
a dataclass (a map of its fields, handed over as an instance), and a shared object class
(``Queue``, ``Lock``, …). ``Any``, ``object`` and hints it does not know are not checked.
"""

import dataclasses
import types
import typing

from . import _msgpack

__all__ = ["checker", "describe", "Mismatch"]


class Mismatch(Exception):
    """A value that does not fit a hint; its text says what the value is."""


def kind_of(v):
    """What a decoded value is, worded as the Rust SDK words a MessagePack value."""
    t = type(v)
    if t is bool:
        return "a boolean"
    if t is int:
        return "an integer"
    if t is float:
        return "a float"
    if t is str:
        return "a string"
    if t is bytes or t is bytearray:
        return "binary data"
    if t is list or t is tuple:
        return "an array"
    if t is dict:
        return "a map"
    if v is None:
        return "nil"
    if isinstance(v, _msgpack._handle_base):
        return f"a {type(v).__name__} handle"
    return f"a {t.__name__}"


def describe(hint):
    """A hint as it is written in Python (``int``, ``list[int]``, ``Optional[str]``)."""
    if hint is type(None):
        return "None"
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    text = str(hint)
    return text.replace("typing.", "").replace("NoneType", "None")


def _fail(v, detail=None):
    raise Mismatch(kind_of(v) if detail is None else f"{kind_of(v)} ({detail})")


def _exact(*types_):
    def check(v):
        if type(v) in types_:
            return v
        _fail(v)

    return check


def _check_int(v):
    if type(v) is int:
        return v
    _fail(v)


def _check_float(v):
    t = type(v)
    if t is float or t is int:
        return v
    _fail(v)


def _check_none(v):
    if v is None:
        return v
    _fail(v)


def _items(v, check, what):
    out = None
    for i, item in enumerate(v):
        try:
            new = check(item)
        except Mismatch as m:
            raise Mismatch(f"{kind_of(v)} ({what} {i + 1}: got {m})") from None
        if new is not item:
            if out is None:
                out = list(v[:i])
            out.append(new)
        elif out is not None:
            out.append(new)
    return v if out is None else out


def checker(hint):
    """A function that returns the value (converted where the hint asks: a tuple, a
    dataclass) or raises :class:`Mismatch`; ``None`` if ``hint`` is not checked."""
    if hint is None or hint is type(None):
        return _check_none
    if hint is typing.Any or hint is object:
        return None
    if isinstance(hint, str):
        return None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is None:
        if hint is bool:
            return _exact(bool)
        if hint is int:
            return _check_int
        if hint is float:
            return _check_float
        if hint is str:
            return _exact(str)
        if hint is bytes:
            return _exact(bytes)
        if hint is bytearray:
            return lambda v: bytearray(_exact(bytes)(v))
        if hint is list:
            return _exact(list)
        if hint is dict:
            return _exact(dict)
        if hint is tuple:
            return lambda v: tuple(_exact(list, tuple)(v))
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            return _dataclass(hint)
        if isinstance(hint, type) and issubclass(hint, _msgpack._handle_base):

            def check_object(v):
                if isinstance(v, hint):
                    return v
                _fail(v)

            return check_object
        return None
    if origin is typing.Union or origin is types.UnionType:
        checks = [checker(a) for a in args]
        if any(c is None for c in checks):
            return None

        def check_union(v):
            for c in checks:
                try:
                    return c(v)
                except Mismatch:
                    continue
            _fail(v)

        return check_union
    if origin is list:
        inner = checker(args[0]) if args else None

        def check_list(v):
            if type(v) is not list:
                _fail(v)
            return v if inner is None else _items(v, inner, "item")

        return check_list
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            inner = checker(args[0])

            def check_var_tuple(v):
                if type(v) not in (list, tuple):
                    _fail(v)
                return tuple(v if inner is None else _items(v, inner, "item"))

            return check_var_tuple
        inners = [checker(a) for a in args]

        def check_tuple(v):
            if type(v) not in (list, tuple):
                _fail(v)
            if len(v) != len(inners):
                _fail(v, f"{len(v)} items, not {len(inners)}")
            out = []
            for i, (c, item) in enumerate(zip(inners, v)):
                try:
                    out.append(item if c is None else c(item))
                except Mismatch as m:
                    raise Mismatch(f"{kind_of(v)} (item {i + 1}: got {m})") from None
            return tuple(out)

        return check_tuple
    if origin is dict:
        key = checker(args[0]) if args else None
        value = checker(args[1]) if len(args) > 1 else None

        def check_dict(v):
            if type(v) is not dict:
                _fail(v)
            if key is None and value is None:
                return v
            out = {}
            for k, item in v.items():
                try:
                    k2 = k if key is None else key(k)
                except Mismatch as m:
                    raise Mismatch(f"a map (key {k!r}: got {m})") from None
                try:
                    out[k2] = item if value is None else value(item)
                except Mismatch as m:
                    raise Mismatch(f"a map (value of {k!r}: got {m})") from None
            return out

        return check_dict
    if origin is typing.Literal:
        allowed = args

        def check_literal(v):
            if any(type(v) is type(a) and v == a for a in allowed):
                return v
            _fail(v)

        return check_literal
    return None


def _dataclass(cls):
    fields = [f for f in dataclasses.fields(cls) if f.init]
    names = {f.name for f in fields}
    required = {
        f.name
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - fields whose hints cannot be resolved are not checked
        hints = {}
    checks = {f.name: checker(hints.get(f.name, f.type)) for f in fields}

    def check(v):
        if isinstance(v, cls):
            return v
        if type(v) is not dict:
            _fail(v)
        missing = required - v.keys()
        if missing:
            _fail(v, f"missing field `{sorted(missing)[0]}`")
        values = {}
        for k, item in v.items():
            if k not in names:
                continue  # as serde does, a field the class does not have is ignored
            c = checks.get(k)
            try:
                values[k] = item if c is None else c(item)
            except Mismatch as m:
                raise Mismatch(f"a map (field `{k}`: got {m})") from None
        return cls(**values)

    return check
