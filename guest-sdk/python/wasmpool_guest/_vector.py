"""Whole-batch MessagePack for the common `map` case: many items of one scalar each.

A `map` of a one-parameter task sends each item as ``[x]`` and gets back one value per item.
Decoding and encoding those one at a time in Python costs several microseconds an item in
the embedded interpreter, far more than a tiny task itself. Here a run of items that share
one encoding (all ``[uint16]``, all ``[float64]``…) is decoded with a few slices and one
``array`` conversion, and a run of results of one kind (ints of one width, floats, None,
bools) is encoded the same way: the per-item work is done in C.

Both produce exactly what the item-by-item codec (:mod:`._msgpack`) produces, and answer
``None`` where they cannot (the caller then takes the item-by-item path).

Cheaper still, :func:`pack_results` gives a batch's results of one kind as one native array
(the `batch-packed` export of the WIT world), which the host turns into each item's
MessagePack: the guest then encodes nothing.
"""

import re
import struct
import sys
from array import array
from operator import countOf

from . import _msgpack

_LITTLE = sys.byteorder == "little"


def _typecode(kind, size):
    for code in kind:
        if array(code).itemsize == size:
            return code
    return None


# Typecodes for an unsigned / signed integer and a float of 1, 2, 4 and 8 bytes.
_UNSIGNED = {n: _typecode("BHILQ", n) for n in (1, 2, 4, 8)}
_SIGNED = {n: _typecode("bhilq", n) for n in (1, 2, 4, 8)}
_FLOAT = {4: _typecode("f", 4), 8: _typecode("d", 8)}

# The fixed-size scalar markers: marker -> (payload bytes, array typecode).
_FIXED = {
    0xCC: (1, _UNSIGNED[1]),
    0xCD: (2, _UNSIGNED[2]),
    0xCE: (4, _UNSIGNED[4]),
    0xCF: (8, _UNSIGNED[8]),
    0xD0: (1, _SIGNED[1]),
    0xD1: (2, _SIGNED[2]),
    0xD2: (4, _SIGNED[4]),
    0xD3: (8, _SIGNED[8]),
    0xCA: (4, _FLOAT[4]),
    0xCB: (8, _FLOAT[8]),
}

# One-byte values: positive and negative fixints; nil, false and true are other kinds.
_NOT_FIXINT = bytes(range(0x80, 0xE0))
_FIXARRAY_1 = 0x91

# Fewer items than this are left to the item-by-item path.
_MIN_RUN = 16


# Lists of item ends made recently, by (first end, step, count): a `map`'s batches share
# their shape, so each is built once per worker instead of an int object per item per batch.
_ARITH = {}
# At most this many ints in them (a few MiB), and how many they hold now.
_ARITH_ITEMS = 1 << 17
_ARITH_HELD = 0


def _arith(first, step, count):
    """``list(range(first, first + step * count, step))``, cached."""
    global _ARITH_HELD
    if count < _MIN_RUN or count > _ARITH_ITEMS:
        return list(range(first, first + step * count, step))
    key = (first, step, count)
    made = _ARITH.get(key)
    if made is None:
        made = list(range(first, first + step * count, step))
        if _ARITH_HELD + count > _ARITH_ITEMS:
            _ARITH.clear()
            _ARITH_HELD = 0
        _ARITH[key] = made
        _ARITH_HELD += count
    return made


def _payloads(seg, count, size, width):
    """The ``width``-byte payloads of ``count`` items of ``size`` bytes each (an array
    header byte, a marker byte, then the payload), as one buffer."""
    if width == 1:
        return seg[2::size]
    buf = bytearray(seg)
    del buf[0::size]
    del buf[0 :: size - 1]
    return buf


def _decode_run(seg, count, size):
    """The one scalar of each of ``count`` ``[x]`` items of ``size`` bytes each, or None."""
    if seg[0::size] != bytes((_FIXARRAY_1,)) * count:
        return None
    if size == 2:
        payload = seg[1::2]
        if len(payload.translate(None, _NOT_FIXINT)) != count:
            return None  # nil, a bool, an empty container: not a number
        if max(payload) < 0x80:
            return list(payload)
        return array(_SIGNED[1], payload).tolist()
    marker = seg[1]
    fixed = _FIXED.get(marker)
    if fixed is None or fixed[0] != size - 2 or fixed[1] is None:
        return None
    if seg[1::size] != bytes((marker,)) * count:
        return None
    width, code = fixed
    values = array(code, _payloads(seg, count, size, width))
    if _LITTLE and width > 1:
        values.byteswap()
    return values.tolist()


def _run_end(ends, i, base, size):
    """The end of the run of items from ``i`` (starting at byte ``base``) that are all
    ``size`` bytes long, or None if it cannot be told cheaply.

    Where the item sizes only grow (or only shrink) along the batch, as a `map` over a
    range's do, ``ends[j - 1] - base == size * (j - i)`` holds exactly for the ``j`` up to
    the run's end: bisect on that, then check the whole run once."""
    n = len(ends)
    good, bad = i + 1, n + 1
    if ends[n - 1] - base == size * (n - i):
        good = n
    while bad - good > 1:
        mid = (good + bad) // 2
        if ends[mid - 1] - base == size * (mid - i):
            good = mid
        else:
            bad = mid
    if ends[i:good] != _arith(base + size, size, good - i):
        return None
    return good


def decode_single(data, ends):
    """The argument of each item of a batch whose every item is ``[x]`` with ``x`` a
    number (an int or float in any of MessagePack's fixed forms), in the order of the
    items; None if some item is not, or the runs of one encoding are too short to gain."""
    n = len(ends)
    if n < _MIN_RUN or ends[-1] != len(data):
        return None
    values = []
    i = 0
    base = 0
    while i < n:
        size = ends[i] - base
        if size < 2:
            return None
        j = _run_end(ends, i, base, size)
        if j is None or (j - i < _MIN_RUN and j < n):
            return None
        end = ends[j - 1]
        run = _decode_run(data[base:end], j - i, size)
        if run is None:
            return None
        values += run
        i = j
        base = end
    return values


# ---- encoding ----------------------------------------------------------------------

# For a non-negative int: (exclusive upper bound, marker or None for a fixint, width).
_UINT_FORMS = (
    (0x80, None, 1),
    (0x100, 0xCC, 1),
    (0x10000, 0xCD, 2),
    (0x100000000, 0xCE, 4),
    (0x10000000000000000, 0xCF, 8),
)
# For a negative int: (inclusive lower bound, marker or None for a fixint, width).
_SINT_FORMS = (
    (-32, None, 1),
    (-0x80, 0xD0, 1),
    (-0x8000, 0xD1, 2),
    (-0x80000000, 0xD2, 4),
    (-0x8000000000000000, 0xD3, 8),
)


def _int_form(v):
    if v >= 0:
        for bound, marker, width in _UINT_FORMS:
            if v < bound:
                return marker, width, False
    else:
        for bound, marker, width in _SINT_FORMS:
            if v >= bound:
                return marker, width, True
    return None


def _fixed(values, marker, width, code, out, ends):
    """Appends ``values`` as ``marker`` + ``width`` big-endian bytes each."""
    count = len(values)
    payload = array(code, values)
    if _LITTLE and width > 1:
        payload.byteswap()
    raw = payload.tobytes()
    size = width + 1
    buf = bytearray(size * count)
    buf[0::size] = bytes((marker,)) * count
    for k in range(width):
        buf[1 + k :: size] = raw[k::width]
    base = len(out)
    out += buf
    ends += _arith(base + size, size, count)


# A non-negative int's form by its bit length: the index of its row in `_UINT_FORMS`, or
# `_NO_FORM` (over 64 bits).
_NO_FORM = len(_UINT_FORMS)
_UINT_FORM_OF_LENGTH = bytes(
    next((i for i, (bound, _, _) in enumerate(_UINT_FORMS) if n <= bound.bit_length() - 1),
         _NO_FORM)
    for n in range(256)
)
# A run of one form (one alternative per form: a literal's repetition is matched in a
# tight loop, where a backreference is not).
_RUNS = re.compile(b"|".join(re.escape(bytes((i,))) + b"+" for i in range(_NO_FORM + 1)))


def _uints(values, out, ends):
    """Appends the non-negative ints ``values``, each in its own smallest form, a run of one
    form at a time: the forms are found in C (bit lengths, translated), not by comparing.
    False if one has no form."""
    try:
        forms = bytes(map(int.bit_length, values)).translate(_UINT_FORM_OF_LENGTH)
    except ValueError:  # a bit length over 255: no form
        return False
    if _NO_FORM in forms or (_UNSIGNED[8] is None and 4 in forms):
        return False
    n = len(forms)
    runs = ((0, n),) if forms.count(forms[0]) == n else (m.span() for m in _RUNS.finditer(forms))
    for a, b in runs:
        part = values if b - a == n else values[a:b]
        _, marker, width = _UINT_FORMS[forms[a]]
        if marker is None:
            base = len(out)
            out += bytes(part)
            ends += _arith(base + 1, 1, len(part))
        else:
            _fixed(part, marker, width, _UNSIGNED[width], out, ends)
    return True


def _ints(values, out, ends):
    """Appends the ints ``values``, or answers False if they do not share one form (the
    non-negative ones always do, each in its own: see `_uints`)."""
    lo = min(values)
    if lo >= 0:
        return _uints(values, out, ends)
    hi = max(values)
    if (lo < 0) != (hi < 0):
        return False
    a = _int_form(lo)
    b = _int_form(hi)
    if a is None or a != b:
        return False
    marker, width, signed = a
    if marker is None:
        base = len(out)
        out += array(_SIGNED[1], values).tobytes() if signed else bytes(values)
        ends += _arith(base + 1, 1, len(values))
        return True
    code = (_SIGNED if signed else _UNSIGNED)[width]
    if code is None:
        return False
    _fixed(values, marker, width, code, out, ends)
    return True


_BOOLS = bytes.maketrans(b"\x00\x01", b"\xc2\xc3")


def _one_kind(values, out, ends):
    """Appends ``values`` (all of one type) in whole-run form; False if it cannot."""
    kind = type(values[0])
    if kind is int:
        return _ints(values, out, ends)
    if kind is float:
        code = _FLOAT[8]
        if code is None:
            return False
        _fixed(values, 0xCB, 8, code, out, ends)
        return True
    base = len(out)
    if values[0] is None:
        out += b"\xc0" * len(values)
    elif kind is bool:
        out += bytes(values).translate(_BOOLS)
    else:
        return False
    ends += _arith(base + 1, 1, len(values))
    return True


def encode_into(values, out, ends, depth=0):
    """Appends the encoding of each of ``values`` to ``out`` and its end offset to
    ``ends``, as ``_msgpack.packb`` of each would; raises ``_msgpack.EncodeError`` for a
    value that has no form (the caller then finds which, item by item)."""
    n = len(values)
    if n >= _MIN_RUN and depth < 12:
        kinds = set(map(type, values))
        if len(kinds) == 1:
            if _one_kind(values, out, ends):
                return
        elif kinds - {int, float, bool, type(None)}:
            depth = 12  # other kinds: item by item, no more splitting
        if depth < 12:
            half = n // 2
            encode_into(values[:half], out, ends, depth + 1)
            encode_into(values[half:], out, ends, depth + 1)
            return
    packb = _msgpack.packb
    for v in values:
        out += packb(v)
        ends.append(len(out))


# ---- packed results (the `batch-packed` export) -------------------------------------


# The `struct` format of ``n`` little-endian 8-byte values of one code: native (no padding
# between 8-byte items of one code) where that is little-endian with 8-byte `q`/`Q`/`d`.
_PACK = "%d%s" if _LITTLE and all(struct.calcsize(c) == 8 for c in "qQd") else "<%d%s"


def pack_results(values, failed=(), types=None):
    """``(kind, payload)`` for the results ``values`` when every one (those at the indices
    in ``failed`` aside: their slots get some value of the kind) is of one kind that packs:
    ``("ints", s64s)``, ``("uints", u64s)`` (an int past the s64s, none negative),
    ``("floats", f64s)`` (every array little-endian bytes), ``("bools", one byte each)``,
    ``("nils", count)``. None otherwise (a str, an int past 64 bits, a mix of kinds, a
    subclass: the caller encodes them as :func:`encode_into` does). ``types``, if given, is
    a list of the type of each value (then ``failed`` is empty)."""
    n = len(values)
    if failed:
        if len(failed) >= n:
            return None
        fill = next(v for i, v in enumerate(values) if i not in failed)
        values = list(values)
        for i in failed:
            values[i] = fill
    if not n:
        return None
    kind = type(values[0])
    # Exact types only, as `encode_into`: a bool is an int to `struct`, an int a float.
    if (countOf(map(type, values), kind) if types is None else types.count(kind)) != n:
        return None
    # `struct` converts a list faster than `array` (which parses a format per item), and
    # its native forms (`_PACK`, on a little-endian machine such as wasm32) faster than its
    # standard ones (which go through a byte-array conversion per int).
    if kind is int:
        try:
            return "ints", struct.pack(_PACK % (n, "q"), *values)
        except struct.error:  # past the s64s
            pass
        try:
            return "uints", struct.pack(_PACK % (n, "Q"), *values)
        except struct.error:  # a negative one, or past 64 bits
            return None
    if kind is float:
        return "floats", struct.pack(_PACK % (n, "d"), *values)
    if kind is bool:
        return "bools", bytes(values)
    if values[0] is None:
        return "nils", n
    return None


# ---- packed items (the `batch-packed` export) ---------------------------------------

_ITEM_CODES = {"ints": (_SIGNED[8], int), "floats": (_FLOAT[8], float)}


def unpack_items(kind, payload):
    """The arguments of a batch's packed items (``kind`` ``"ints"``: s64s, ``"floats"``:
    f64s, little-endian) and their type, or None if ``kind`` is another. The arguments are
    an ``array`` (its items are made one at a time as a map iterates it, not all at once
    into a list; copying it is one memory copy)."""
    entry = _ITEM_CODES.get(kind)
    if entry is None or entry[0] is None:
        return None
    code, typ = entry
    if len(payload) % 8:
        raise ValueError("the batch's packed items are not whole 8-byte values")
    values = array(code)
    values.frombytes(payload)
    if not _LITTLE:
        values.byteswap()
    return values, typ


def encode_items(values, first):
    """Items ``first`` onwards of a batch whose arguments are ``values`` (one each), as
    the batch's ``(data, ends)`` would hold them: the items before ``first`` are empty."""
    data = bytearray()
    ends = [0] * first
    packb = _msgpack.packb
    for v in values[first:]:
        data += packb([v])
        ends.append(len(data))
    return bytes(data), ends
