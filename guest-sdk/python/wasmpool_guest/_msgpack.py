"""A small MessagePack codec: the subset that wasmpool tasks exchange, written exactly as the
Rust SDK writes it (rmp / rmp_serde).

Pure Python, no dependencies, so componentize-py bundles it with the task module.

Encoding, per value:

- ``None`` -> nil; ``bool`` -> true/false.
- ``int`` -> the most compact integer form: non-negative values as positive fixint or
  uint8/16/32/64, negative ones as negative fixint or int8/16/32/64 (rmp's ``write_uint``
  and ``write_sint``). An int outside -2**63 .. 2**64-1 cannot be encoded.
- ``float`` -> float64.
- ``str`` -> fixstr/str8/str16/str32 of its UTF-8 bytes.
- ``bytes``/``bytearray``/``memoryview`` -> bin8/16/32.
- ``list``/``tuple`` -> array; ``dict`` -> map, in the dict's order.
- a dataclass instance -> a map of its fields by name (as rmp_serde writes a struct).

Decoding gives the same types back (arrays as lists; a map key that is an array becomes a
tuple so it can be a dict key); an extension value decodes to ``(type, bytes)``.
"""

import struct
from dataclasses import fields as _fields, is_dataclass as _is_dataclass

__all__ = ["packb", "unpackb", "EncodeError", "DecodeError"]


class EncodeError(TypeError):
    """A value that MessagePack (as wasmpool uses it) cannot hold."""


class DecodeError(ValueError):
    """Bytes that are not one well-formed MessagePack value."""


_pack_B = struct.Struct(">B").pack
_pack_H = struct.Struct(">H").pack
_pack_I = struct.Struct(">I").pack
_pack_Q = struct.Struct(">Q").pack
_pack_b = struct.Struct(">b").pack
_pack_h = struct.Struct(">h").pack
_pack_i = struct.Struct(">i").pack
_pack_q = struct.Struct(">q").pack
_pack_d = struct.Struct(">d").pack

# The encodings of the small integers, so a tiny task's result costs one lookup.
_FIXINT = [bytes((i,)) for i in range(128)]
_NEGFIX = {i: bytes((i & 0xFF,)) for i in range(-32, 0)}


def _int(v, out):
    if v >= 0:
        if v < 128:
            out += _FIXINT[v]
        elif v < 0x100:
            out += b"\xcc" + _pack_B(v)
        elif v < 0x10000:
            out += b"\xcd" + _pack_H(v)
        elif v < 0x100000000:
            out += b"\xce" + _pack_I(v)
        elif v < 0x10000000000000000:
            out += b"\xcf" + _pack_Q(v)
        else:
            raise EncodeError(f"integer {v} does not fit in 64 bits")
    elif v >= -32:
        out += _NEGFIX[v]
    elif v >= -0x80:
        out += b"\xd0" + _pack_b(v)
    elif v >= -0x8000:
        out += b"\xd1" + _pack_h(v)
    elif v >= -0x80000000:
        out += b"\xd2" + _pack_i(v)
    elif v >= -0x8000000000000000:
        out += b"\xd3" + _pack_q(v)
    else:
        raise EncodeError(f"integer {v} does not fit in 64 bits")


def _len(n, out, fix, fixmax, m8, m16, m32):
    if n <= fixmax and fix is not None:
        out.append(fix | n)
    elif n < 0x100 and m8 is not None:
        out.append(m8)
        out += _pack_B(n)
    elif n < 0x10000:
        out.append(m16)
        out += _pack_H(n)
    elif n < 0x100000000:
        out.append(m32)
        out += _pack_I(n)
    else:
        raise EncodeError("a value of more than 2**32 - 1 items or bytes")


def _pack(v, out, depth):
    t = type(v)
    if t is int:
        _int(v, out)
    elif t is str:
        b = v.encode("utf-8")
        _len(len(b), out, 0xA0, 31, 0xD9, 0xDA, 0xDB)
        out += b
    elif v is None:
        out.append(0xC0)
    elif t is bool:
        out.append(0xC3 if v else 0xC2)
    elif t is float:
        out += b"\xcb" + _pack_d(v)
    elif t is list or t is tuple:
        if depth > 512:
            raise EncodeError("a value nested more than 512 levels deep")
        _len(len(v), out, 0x90, 15, None, 0xDC, 0xDD)
        for item in v:
            _pack(item, out, depth + 1)
    elif t is dict:
        if depth > 512:
            raise EncodeError("a value nested more than 512 levels deep")
        _len(len(v), out, 0x80, 15, None, 0xDE, 0xDF)
        for key, item in v.items():
            _pack(key, out, depth + 1)
            _pack(item, out, depth + 1)
    elif t is bytes or t is bytearray or t is memoryview:
        b = bytes(v)
        _len(len(b), out, None, -1, 0xC4, 0xC5, 0xC6)
        out += b
    elif isinstance(v, bool):
        out.append(0xC3 if v else 0xC2)
    elif isinstance(v, int):
        _int(int(v), out)
    elif isinstance(v, float):
        out += b"\xcb" + _pack_d(float(v))
    elif isinstance(v, str):
        _pack(str(v), out, depth)
    elif isinstance(v, (list, tuple)):
        _pack(list(v), out, depth)
    elif isinstance(v, dict):
        _pack(dict(v), out, depth)
    elif isinstance(v, (bytes, bytearray)):
        _pack(bytes(v), out, depth)
    elif _is_dataclass(v) and not isinstance(v, type):
        _pack({f.name: getattr(v, f.name) for f in _fields(v)}, out, depth)
    elif isinstance(v, _handle_base):
        # A shared object travels as its handle, `[tag, id, token]`.
        _pack(v.__wasmpool_handle__(), out, depth)
    else:
        raise EncodeError(f"a value of type `{t.__name__}` has no MessagePack form")


def packb(value):
    """``value`` as MessagePack bytes. Raises :class:`EncodeError` for what has no form."""
    t = type(value)
    if t is int:
        # The common result of a tiny task, without a buffer.
        if 0 <= value < 128:
            return _FIXINT[value]
        if value >= 0:
            if value < 0x100:
                return b"\xcc" + _pack_B(value)
            if value < 0x10000:
                return b"\xcd" + _pack_H(value)
            if value < 0x100000000:
                return b"\xce" + _pack_I(value)
            if value < 0x10000000000000000:
                return b"\xcf" + _pack_Q(value)
        elif value >= -32:
            return _NEGFIX[value]
    out = bytearray()
    _pack(value, out, 0)
    return bytes(out)


_unpack_from = struct.unpack_from


class _NoHandles:
    pass


# Shared objects (set by `wasmpool_guest.objects`): their base class, and the class of
# each handle tag, so a `[tag, id, token]` array decodes to the object.
_handle_base = _NoHandles
_handle_kinds = {}


def register_handles(base, kinds):
    """Makes instances of ``base`` encode as their handle, and ``[tag, id, token]`` arrays
    whose tag is in ``kinds`` decode as ``kinds[tag](id, token)``."""
    global _handle_base, _handle_kinds
    _handle_base = base
    _handle_kinds = dict(kinds)


def _maybe_handle(items):
    # A three-item array: a handle if it looks exactly like one.
    tag = items[0]
    if type(tag) is str and tag in _handle_kinds:
        id, token = items[1], items[2]
        if type(id) is int and type(token) is int and id >= 0 and token >= 0:
            return _handle_kinds[tag](id, token)
    return items


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data):
        self.data = data
        self.pos = 0

    def take(self, n):
        start = self.pos
        end = start + n
        if end > len(self.data):
            raise DecodeError("the value ends early")
        self.pos = end
        return self.data[start:end]

    def fmt(self, f, n):
        start = self.pos
        if start + n > len(self.data):
            raise DecodeError("the value ends early")
        self.pos = start + n
        return _unpack_from(f, self.data, start)[0]


def _hashable(key):
    if type(key) is list:
        return tuple(_hashable(k) for k in key)
    if type(key) is dict:
        raise DecodeError("a map key that is a map")
    return key


def _unpack(r, depth):
    if depth > 512:
        raise DecodeError("a value nested more than 512 levels deep")
    data = r.data
    pos = r.pos
    if pos >= len(data):
        raise DecodeError("the value ends early")
    m = data[pos]
    r.pos = pos + 1
    if m <= 0x7F:
        return m
    if m >= 0xE0:
        return m - 0x100
    if 0xA0 <= m <= 0xBF:
        return _str(r.take(m & 0x1F))
    if 0x90 <= m <= 0x9F:
        items = [_unpack(r, depth + 1) for _ in range(m & 0x0F)]
        if m == 0x93 and _handle_kinds:
            return _maybe_handle(items)
        return items
    if 0x80 <= m <= 0x8F:
        return _map(r, m & 0x0F, depth)
    if m == 0xC0:
        return None
    if m == 0xC2:
        return False
    if m == 0xC3:
        return True
    if m == 0xCC:
        return r.fmt(">B", 1)
    if m == 0xCD:
        return r.fmt(">H", 2)
    if m == 0xCE:
        return r.fmt(">I", 4)
    if m == 0xCF:
        return r.fmt(">Q", 8)
    if m == 0xD0:
        return r.fmt(">b", 1)
    if m == 0xD1:
        return r.fmt(">h", 2)
    if m == 0xD2:
        return r.fmt(">i", 4)
    if m == 0xD3:
        return r.fmt(">q", 8)
    if m == 0xCA:
        return r.fmt(">f", 4)
    if m == 0xCB:
        return r.fmt(">d", 8)
    if m == 0xD9:
        return _str(r.take(r.fmt(">B", 1)))
    if m == 0xDA:
        return _str(r.take(r.fmt(">H", 2)))
    if m == 0xDB:
        return _str(r.take(r.fmt(">I", 4)))
    if m == 0xC4:
        return bytes(r.take(r.fmt(">B", 1)))
    if m == 0xC5:
        return bytes(r.take(r.fmt(">H", 2)))
    if m == 0xC6:
        return bytes(r.take(r.fmt(">I", 4)))
    if m == 0xDC:
        return [_unpack(r, depth + 1) for _ in range(r.fmt(">H", 2))]
    if m == 0xDD:
        return [_unpack(r, depth + 1) for _ in range(r.fmt(">I", 4))]
    if m == 0xDE:
        return _map(r, r.fmt(">H", 2), depth)
    if m == 0xDF:
        return _map(r, r.fmt(">I", 4), depth)
    fixext = {0xD4: 1, 0xD5: 2, 0xD6: 4, 0xD7: 8, 0xD8: 16}
    if m in fixext:
        code = r.fmt(">b", 1)
        return (code, bytes(r.take(fixext[m])))
    if m in (0xC7, 0xC8, 0xC9):
        n = r.fmt({0xC7: ">B", 0xC8: ">H", 0xC9: ">I"}[m], {0xC7: 1, 0xC8: 2, 0xC9: 4}[m])
        code = r.fmt(">b", 1)
        return (code, bytes(r.take(n)))
    raise DecodeError(f"marker byte 0x{m:02x} is not MessagePack")


def _str(b):
    try:
        return bytes(b).decode("utf-8")
    except UnicodeDecodeError as e:
        raise DecodeError(f"a string that is not UTF-8 ({e})") from None


def _map(r, n, depth):
    out = {}
    for _ in range(n):
        key = _hashable(_unpack(r, depth + 1))
        out[key] = _unpack(r, depth + 1)
    return out


def unpack_array_start(data):
    """The header of the array at the start of ``data``: ``(length, reader)``, or
    ``(None, None)`` if ``data`` does not start with an array."""
    r = _Reader(data)
    if not data:
        return None, None
    m = data[0]
    if 0x90 <= m <= 0x9F:
        r.pos = 1
        return m & 0x0F, r
    if m == 0xDC and len(data) >= 3:
        r.pos = 3
        return _unpack_from(">H", data, 1)[0], r
    if m == 0xDD and len(data) >= 5:
        r.pos = 5
        return _unpack_from(">I", data, 1)[0], r
    return None, None


def unpack_next(r):
    """The next value from a reader of :func:`unpack_array_start`."""
    return _unpack(r, 1)


def unpackb(data):
    """The one MessagePack value in ``data``. Raises :class:`DecodeError` if ``data`` is
    not exactly one well-formed value."""
    if type(data) is not bytes:
        data = bytes(data)
    r = _Reader(data)
    value = _unpack(r, 0)
    if r.pos != len(data):
        raise DecodeError(f"{len(data) - r.pos} bytes follow the value")
    return value
