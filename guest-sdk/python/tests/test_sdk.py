"""Unit tests of the Python guest SDK's pure-Python parts (codec, registry), run with any
Python 3: `python3 -m unittest discover -s guest-sdk/python/tests`."""

import os
import sys
import unittest
from dataclasses import dataclass

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import queue  # noqa: E402
import threading  # noqa: E402
from typing import Optional  # noqa: E402

import random  # noqa: E402
import struct  # noqa: E402
from array import array  # noqa: E402

from wasmpool_guest import _batch, _msgpack, _registry, _vector, objects  # noqa: E402


class Codec(unittest.TestCase):
    def test_integers_take_rmps_most_compact_form(self):
        cases = {
            0: "00", 127: "7f", 128: "cc80", 255: "ccff", 256: "cd0100",
            65535: "cdffff", 65536: "ce00010000", 2**32: "cf0000000100000000",
            2**64 - 1: "cfffffffffffffffff", -1: "ff", -32: "e0", -33: "d0df",
            -128: "d080", -129: "d1ff7f", -32768: "d18000", -32769: "d2ffff7fff",
            -(2**31) - 1: "d3ffffffff7fffffff", -(2**63): "d38000000000000000",
        }
        for value, hexed in cases.items():
            self.assertEqual(_msgpack.packb(value).hex(), hexed, value)
            self.assertEqual(_msgpack.unpackb(bytes.fromhex(hexed)), value)
        for big in (2**64, -(2**63) - 1):
            with self.assertRaises(_msgpack.EncodeError):
                _msgpack.packb(big)

    def test_other_scalars(self):
        self.assertEqual(_msgpack.packb(None), b"\xc0")
        self.assertEqual(_msgpack.packb(True), b"\xc3")
        self.assertEqual(_msgpack.packb(False), b"\xc2")
        self.assertEqual(_msgpack.packb(1.5).hex(), "cb3ff8000000000000")
        self.assertEqual(_msgpack.unpackb(bytes.fromhex("ca3fc00000")), 1.5)

    def test_strings_bytes_and_containers(self):
        self.assertEqual(_msgpack.packb("hi"), b"\xa2hi")
        self.assertEqual(_msgpack.packb("x" * 32)[:2], b"\xd9\x20")
        self.assertEqual(_msgpack.packb("x" * 256)[:3], b"\xda\x01\x00")
        self.assertEqual(_msgpack.packb(b"ab"), b"\xc4\x02ab")
        self.assertEqual(_msgpack.packb([1, "a"]), b"\x92\x01\xa1a")
        self.assertEqual(_msgpack.packb((1, 2)), b"\x92\x01\x02")
        self.assertEqual(_msgpack.packb(list(range(16)))[:3], b"\xdc\x00\x10")
        self.assertEqual(_msgpack.packb({"a": 1}), b"\x81\xa1a\x01")
        value = {"k": [1, -2, 3.5, None, True, "s", b"b", {"n": []}]}
        self.assertEqual(_msgpack.unpackb(_msgpack.packb(value)), value)

    def test_dataclass_is_a_map_of_its_fields_like_a_serde_struct(self):
        @dataclass
        class Point:
            x: int
            y: int

        self.assertEqual(_msgpack.packb(Point(1, 2)), _msgpack.packb({"x": 1, "y": 2}))

    def test_array_keys_decode_as_tuples(self):
        self.assertEqual(_msgpack.unpackb(b"\x81\x92\x01\x02\xa1v"), {(1, 2): "v"})

    def test_malformed_input_is_a_decode_error(self):
        for bad in (b"", b"\x92\x01", b"\xc1", b"\x01\x02", b"\xa2\xff\xfe"):
            with self.assertRaises(_msgpack.DecodeError, msg=bad):
                _msgpack.unpackb(bad)

    def test_unencodable_value(self):
        with self.assertRaises(_msgpack.EncodeError):
            _msgpack.packb(object())


class Registry(unittest.TestCase):
    def setUp(self):
        self.saved = dict(_registry.TASKS)
        _registry.TASKS.clear()

    def tearDown(self):
        _registry.TASKS.clear()
        _registry.TASKS.update(self.saved)

    def test_task_and_named_task(self):
        @_registry.task
        def square(x: int) -> int:
            return x * x

        @_registry.task(name="other")
        def f(a, b=2):
            return a + b

        self.assertEqual(_registry.task_names(), ["square", "other"])
        self.assertEqual(_registry.call("square", _msgpack.packb([7])), _msgpack.packb(49))
        self.assertEqual(_registry.call("other", _msgpack.packb([1])), b"\x03")
        self.assertEqual(square(3), 9, "the function stays callable")

    def test_errors(self):
        @_registry.task
        def square(x: int) -> int:
            return x * x

        @_registry.task
        def boom(x):
            raise ValueError(f"bad {x}")

        with self.assertRaises(_registry.TaskFailure) as e:
            _registry.call("nope", b"\x90")
        self.assertEqual(e.exception.kind, "unknown-task")
        with self.assertRaises(_registry.TaskFailure) as e:
            _registry.call("square", _msgpack.packb([1, 2]))
        self.assertEqual(e.exception.kind, "bad-args")
        self.assertEqual(
            e.exception.message, "task `square` takes 1 argument (x: int), got 2"
        )
        with self.assertRaises(_registry.TaskFailure) as e:
            _registry.call("square", b"\x07")
        self.assertEqual(e.exception.kind, "bad-args")
        with self.assertRaises(_registry.TaskFailure) as e:
            _registry.call("boom", _msgpack.packb([5]))
        self.assertEqual(e.exception.kind, "failed")
        self.assertTrue(e.exception.message.startswith("ValueError: bad 5\n"))
        self.assertIn("Traceback (most recent call last):", e.exception.message)
        self.assertIn("raise ValueError", e.exception.message)
        self.assertNotIn("_registry.py", e.exception.message, "the SDK's frame is left out")

    def test_a_missing_import_says_why(self):
        @_registry.task
        def late():
            import wasmpool_no_such_module  # noqa: F401

        with self.assertRaises(_registry.TaskFailure) as e:
            _registry.call("late", b"\x90")
        self.assertTrue(e.exception.message.startswith("ModuleNotFoundError: "))
        self.assertIn("import it at the top of the module", e.exception.message)

    def test_a_batchs_fast_path_answers_as_a_call(self):
        @_registry.task
        def sq(x):
            return x * x

        @_registry.task
        def typed(x: int):
            return -x

        for name in ("sq", "typed"):
            run = _registry.batch_caller(name)
            for args in ([0], [127], [128], [300], [70000], [2**31], [-5], [2**40], ["s"], [1, 2], []):
                data = b"pad" + _msgpack.packb(args) + b"pad"
                outcomes = []
                for f in (lambda: run(data, 3, len(data) - 3), lambda: _registry.call(name, data[3:-3])):
                    try:
                        outcomes.append(f())
                    except _registry.TaskFailure as e:
                        outcomes.append((e.kind, e.message.split("\n")[0]))
                self.assertEqual(outcomes[0], outcomes[1], (name, args))
        self.assertIsNone(_registry.batch_caller("nope"))

    def test_two_tasks_of_one_name_are_refused(self):
        _registry.task(lambda: 1, name="x")
        with self.assertRaises(ValueError):
            _registry.task(lambda: 2, name="x")


def _items(values):
    """A batch's `packed` items: each value as a one-argument call."""
    data = bytearray()
    ends = []
    for v in values:
        data += _msgpack.packb([v])
        ends.append(len(data))
    return bytes(data), ends


class WholeBatchCodec(unittest.TestCase):
    """The whole-batch codec gives exactly what the item-by-item one gives."""

    def assert_encodes_as_packb(self, values):
        out, ends = bytearray(), []
        _vector.encode_into(values, out, ends)
        want, want_ends = bytearray(), []
        for v in values:
            want += _msgpack.packb(v)
            want_ends.append(len(want))
        self.assertEqual((bytes(out), ends), (bytes(want), want_ends), values[:8])

    def test_runs_of_numbers_decode_as_the_item_codec_decodes_them(self):
        rnd = random.Random(7)
        cases = [
            list(range(200)),
            list(range(-300, 300)),
            list(range(0, 200000, 7)),
            sorted(rnd.randint(0, 2**64 - 1) for _ in range(500)),
            sorted(-rnd.randint(1, 2**63) for _ in range(500)),
            [rnd.random() for _ in range(100)],
        ]
        for values in cases:
            got = _vector.decode_single(*_items(values))
            self.assertEqual(got, values)
            self.assertEqual([type(v) for v in got], [type(v) for v in values])

    def test_what_it_cannot_decode_at_once_is_left_to_the_item_path(self):
        rnd = random.Random(8)
        for values in (
            [None] * 40, [True] * 40, ["a"] * 40, [[1]] * 40, list(range(5)),
            [rnd.randint(-2**63, 2**64 - 1) for _ in range(100)],  # no long runs
        ):
            self.assertIsNone(_vector.decode_single(*_items(values)), values[:4])
        data, ends = _items(list(range(100)))
        self.assertIsNone(_vector.decode_single(data, [e + 1 for e in ends[:-1]] + [ends[-1]]))
        self.assertIsNone(_vector.decode_single(b"\x92\x01\x02" * 20, list(range(3, 61, 3))))

    def test_results_encode_byte_for_byte_as_packb(self):
        rnd = random.Random(9)
        kinds = [0, 1, -1, 200, -200, 70000, -70000, 2**40, -2**40, 1.5, None, False, "x", [1]]
        for values in (
            list(range(300)), [x * x for x in range(0, 200000, 3)], list(range(-40000, 0)),
            [rnd.random() for _ in range(100)], [rnd.randint(-2**63, 2**64 - 1) for _ in range(999)],
            [None] * 40, [True, False] * 40, ["ab"] * 40, [1, 2.5, None, True] * 40,
            [rnd.choice(kinds) for _ in range(5000)], [], [3],
            [100, 200, 70000, 5, 2**33] * 50, [2**64 - 1, 0] * 30,  # a run per item
        ):
            self.assert_encodes_as_packb(values)

    def test_a_result_without_a_form_is_an_encode_error(self):
        with self.assertRaises(_msgpack.EncodeError):
            _vector.encode_into([1] * 20 + [2**64] + [1] * 20, bytearray(), [])


class WholeBatch(unittest.TestCase):
    """A batch run at once answers as the same batch run item by item."""

    def setUp(self):
        self.saved = dict(_registry.TASKS)
        _registry.TASKS.clear()

    def tearDown(self):
        _registry.TASKS.clear()
        _registry.TASKS.update(self.saved)

    def outcomes(self, name, values, whole=True):
        reports = []
        data, ends = _items(values)
        b = _batch.Batch(name, data, ends, reports.append)
        if not whole:
            b._run_items(0)
            out, out_ends, errors = bytes(b.out), b.out_ends, b.errors
        else:
            out, out_ends, errors = b.run()
        reports.append(("final", out, out_ends, [(i, f.kind, f.message) for i, f in errors]))
        flat = []
        for r in reports:
            if isinstance(r, tuple):
                _, out, out_ends, errors = r
                errs = {i: (k, m) for i, k, m in errors}
                start = 0
                for i, end in enumerate(out_ends):
                    flat.append(errs.get(i) or out[start:end])
                    start = end
            else:
                flat += [(o.kind, o.message) if isinstance(o, _registry.TaskFailure) else o for o in r]
        return flat, reports

    def test_results_and_failures_match_the_item_path(self):
        @_registry.task
        def sq(x):
            if x % 97 == 5:
                raise ValueError(f"bad {x}")
            return x * x if x % 2 else float(x)

        @_registry.task
        def typed(x: int) -> int:
            return x + 1

        @_registry.task
        def huge(x):
            return 2**64 if x == 30 else x

        for name in ("sq", "typed", "huge"):
            for values in (list(range(1000)), list(range(-500, 500, 3)), [0.5] * 50):
                whole, _ = self.outcomes(name, values)
                items, _ = self.outcomes(name, values, whole=False)
                self.assertEqual(whole, items, (name, values[:3]))
                self.assertEqual(len(whole), len(values))
        whole, _ = self.outcomes("sq", list(range(200)))
        self.assertTrue(whole[5][1].startswith("ValueError: bad 5\n\nTraceback"), whole[5])
        self.assertIn("in sq", whole[5][1])
        self.assertNotIn("_batch.py", whole[5][1])

    def test_a_stop_iteration_fails_its_item_once(self):
        # (`map` took a StopIteration from the task for the end of its input: the batch
        # now calls the task from a comprehension, where it is an exception as any other.)
        batch, calls = [], []

        @_registry.task
        def stops(x):
            calls.append(x)
            if x == 20:
                batch[0].before_effect()
                raise StopIteration("early")
            return x

        reports = []
        data, ends = _items(list(range(40)))
        b = _batch.Batch("stops", data, ends, reports.append)
        batch.append(b)
        out, out_ends, errors = b.run()
        self.assertEqual(calls, list(range(40)), "every item ran once")
        self.assertEqual([len(r) for r in reports], [20, 1])
        self.assertIsInstance(reports[1][0], _registry.TaskFailure)
        self.assertTrue(reports[1][0].message.startswith("StopIteration: early\n"), reports[1][0].message)
        self.assertIn("in stops", reports[1][0].message)
        self.assertNotIn("_batch.py", reports[1][0].message)
        self.assertEqual((len(out_ends), errors), (19, []))

    def test_a_result_that_fails_to_encode_fails_only_its_item(self):
        @_registry.task
        def odd(x):
            return "\ud800" if x == 5 else x  # a lone surrogate: no UTF-8

        def heads(outcomes):
            # An error's first line: the SDK frames of its traceback differ by path.
            return [o if isinstance(o, bytes) else (o[0], o[1].split("\n")[0]) for o in outcomes]

        whole, _ = self.outcomes("odd", list(range(40)))
        items, _ = self.outcomes("odd", list(range(40)), whole=False)
        self.assertEqual(heads(whole), heads(items))
        self.assertTrue(whole[5][1].startswith("UnicodeEncodeError"), whole[5])
        self.assertEqual(whole[6], _msgpack.packb(6))

    def test_ends_past_the_data_are_left_to_the_item_path(self):
        data = bytes([0x91, 0xCD, 1, 2]) * 16
        self.assertIsNone(_vector.decode_single(data[:-1], list(range(4, 65, 4))))
        self.assertIsNone(_vector.decode_single((bytes([0x91, 0xCC, 200]) * 16)[:-1], list(range(3, 49, 3))))

    def test_an_item_with_an_effect_is_reported_as_soon_as_it_finishes(self):
        batch = []

        @_registry.task
        def touch(x):
            if x in (40, 41, 70):
                batch[0].before_effect()  # what an object operation calls first
            return x

        reports = []
        data, ends = _items(list(range(100)))
        b = _batch.Batch("touch", data, ends, reports.append)
        batch.append(b)
        out, out_ends, errors = b.run()
        lengths = [len(r) for r in reports]
        # Items 0..39 reported before 40's operation, 40 right after it, 41 before and
        # after its own, and so on; the rest come back with the batch.
        self.assertEqual(lengths, [40, 1, 1, 28, 1])
        self.assertEqual(len(out_ends), 29)
        flat = [o for r in reports for o in r]
        self.assertEqual(flat, [_msgpack.packb(i) for i in range(71)])

def _unpacked(packed):
    """What the host makes of packed results (see `worker/packed_results.rs`): each item's
    value, as the item codec would encode it."""
    kind, payload = packed
    if kind == "nils":
        return [None] * payload
    if kind == "bools":
        return [bool(b) for b in payload]
    values = array({"ints": "q", "uints": "Q", "floats": "d"}[kind])
    values.frombytes(payload)
    if sys.byteorder != "little":
        values.byteswap()
    return values.tolist()


class PackedResults(unittest.TestCase):
    """Results of one kind come back as one native array (the `batch-packed` export),
    and what does not pack is left to the encoder."""

    def setUp(self):
        self.saved = dict(_registry.TASKS)
        _registry.TASKS.clear()

    def tearDown(self):
        _registry.TASKS.clear()
        _registry.TASKS.update(self.saved)

    def test_each_kind_packs_to_its_array(self):
        ints = [0, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, -1, -32,
                -33, -128, -129, -32768, -32769, -(2**31), -(2**31) - 1, -(2**63)] * 2
        uints = [0, 1, 2**63, 2**64 - 1] * 5
        floats = [0.0, -0.0, 1.5, float("inf"), float("-inf"), float("nan"), 5e-324] * 3
        for values, kind in ((ints, "ints"), (uints, "uints"), (floats, "floats"),
                             ([True, False] * 10, "bools"), ([None] * 20, "nils")):
            packed = _vector.pack_results(values)
            self.assertEqual(packed[0], kind, values[:4])
            got = _unpacked(packed)
            self.assertEqual([_msgpack.packb(v) for v in got], [_msgpack.packb(v) for v in values])
            self.assertEqual([type(v) for v in got], [type(v) for v in values])
        # The float bits go as they are: -0.0 and NaN included.
        self.assertEqual(_vector.pack_results(floats)[1][8:16], struct.pack("<d", -0.0))

    def test_what_does_not_pack_is_none(self):
        class Small(int):
            pass

        for values in (
            [1, 2.5] * 10,             # ints and floats
            [1, True] * 10,            # a bool is no int here
            [1.0, True] * 10,
            [1, None] * 10,
            [2**64] + [1] * 19,        # past 64 bits
            [-1] + [2**63] * 19,       # fits neither s64s nor u64s
            [-(2**63) - 1] * 20,
            ["a"] * 20,
            [[1]] * 20,
            [Small(1)] * 20,
            [],
        ):
            self.assertIsNone(_vector.pack_results(values), values[:3])

    def test_failed_slots_take_a_value_of_the_kind(self):
        values = [None if i % 7 == 3 else i * 1.5 for i in range(40)]
        failed = {i: "x" for i in range(40) if i % 7 == 3}
        kind, payload = _vector.pack_results(values, failed)
        self.assertEqual(kind, "floats")
        got = _unpacked((kind, payload))
        self.assertEqual([v for i, v in enumerate(got) if i not in failed],
                         [v for i, v in enumerate(values) if i not in failed])
        self.assertEqual(values[3], None, "the caller's list is left as it was")
        self.assertIsNone(_vector.pack_results([None, None], {0: 1, 1: 1}))

    def outcomes(self, name, values, pack, args=False):
        """A batch's outcomes, item by item, with packed results written out as the host
        writes them; and whether they came packed. ``args``: the items come packed too."""
        reports = []
        if args:
            kind = "floats" if type(values[0]) is float else "ints"
            payload = struct.pack("<%d%s" % (len(values), "d" if kind == "floats" else "q"), *values)
            b = _batch.Batch(name, b"", None, reports.append, pack, _vector.unpack_items(kind, payload))
        else:
            data, ends = _items(values)
            b = _batch.Batch(name, data, ends, reports.append, pack)
        out, out_ends, errors = b.run()
        flat = [(o.kind, o.message) if isinstance(o, _registry.TaskFailure) else o
                for r in reports for o in r]
        errs = {i: (f.kind, f.message) for i, f in errors}
        if b.packed is not None:
            self.assertEqual((out, out_ends), (b"", []))
            got = _unpacked(b.packed)
            self.assertEqual(len(got), len(values))
            flat += [errs.get(i) or _msgpack.packb(v) for i, v in enumerate(got)]
        else:
            start = 0
            for i, end in enumerate(out_ends):
                flat.append(errs.get(i) or out[start:end])
                start = end
        return flat, b.packed is not None

    def test_a_batch_answers_packed_exactly_what_it_answers_encoded(self):
        @_registry.task
        def sq(x):
            if x % 97 == 5:
                raise ValueError(f"bad {x}")
            return x * x

        @_registry.task
        def half(x: int) -> float:
            return x / 2

        @_registry.task
        def mixed(x):
            return x if x % 3 else x / 3

        @_registry.task
        def big(x):
            return 2**70 if x == 30 else x

        @_registry.task
        def text(x):
            return str(x)

        @_registry.task
        def stops(x):
            if x == 20:
                raise StopIteration
            return x

        class Sub(int):
            pass

        # One result among ints of another type that `struct` takes for an int: never
        # packed as one (a bool stays a bool, a subclass goes as the item path writes it).
        @_registry.task
        def one_bool(x):
            return True if x == 37 else x

        @_registry.task
        def one_sub(x):
            return Sub(x) if x == 37 else x

        @_registry.task
        def bools(x):
            return x % 3 == 0

        cases = {
            "sq": (range(1000), True), "half": (range(-500, 500, 3), True),
            "mixed": (range(100), False), "big": (range(100), False),
            "text": (range(50), False), "stops": (range(50), True),
            "one_bool": (range(100), False), "one_sub": (range(100), False),
            "bools": (range(100), True),
        }
        for name, (values, packs) in cases.items():
            values = list(values)
            packed, was_packed = self.outcomes(name, values, True)
            encoded, was_encoded = self.outcomes(name, values, False)
            self.assertEqual(packed, encoded, name)
            self.assertEqual(len(packed), len(values), name)
            self.assertEqual((was_packed, was_encoded), (packs, False), name)
        packed, _ = self.outcomes("sq", list(range(1000)), True)
        self.assertTrue(packed[5][1].startswith("ValueError: bad 5\n"), packed[5])
        self.assertEqual(packed[102][0], "failed")
        self.assertEqual(packed[6], b"\x24")

    def test_packed_items_answer_as_the_same_items_encoded(self):
        batch = []

        @_registry.task
        def sq(x):
            if x % 97 == 5:
                raise ValueError(f"bad {x}")
            return x * x

        @_registry.task
        def typed(x: int) -> str:
            return str(x)

        @_registry.task
        def as_float(x: float) -> float:
            return x * 2

        @_registry.task
        def stops(x):
            if x == 20:
                raise StopIteration("early")
            return x

        @_registry.task
        def touch(x):
            if x in (40, 41):
                batch[0].before_effect()
            return x + 0.5

        @_registry.task
        def two(x, y):
            return x + y

        ints = list(range(-300, 700, 3)) + [2**63 - 1, -(2**63)] * 8
        floats = [0.5 * i for i in range(-50, 50)] + [float("inf"), -0.0] * 8
        for name in ("sq", "typed", "as_float", "stops", "two"):
            for values in (ints, floats):
                for pack in (False, True):
                    given, _ = self.outcomes(name, values, pack, args=True)
                    encoded, _ = self.outcomes(name, values, pack)
                    self.assertEqual(given, encoded, (name, values[0], pack))
        # A float hint takes ints; an int hint words its mismatch for floats, item by item.
        given, packed = self.outcomes("as_float", ints[:-16], True, args=True)
        self.assertTrue(packed)
        self.assertEqual(given[0], _msgpack.packb(-600))
        given, packed = self.outcomes("typed", floats, True, args=True)
        self.assertFalse(packed)
        self.assertEqual(given[0][0], "bad-args")
        # An item that touched an object: the rest of the batch goes item by item.
        reports = []
        payload = struct.pack("<100q", *range(100))
        b = _batch.Batch("touch", b"", None, reports.append, True, _vector.unpack_items("ints", payload))
        batch.append(b)
        out, out_ends, errors = b.run()
        self.assertIsNone(b.packed)
        self.assertEqual([len(r) for r in reports], [40, 1, 1])
        flat = [o for r in reports for o in r]
        start = 0
        for end in out_ends:
            flat.append(out[start:end])
            start = end
        self.assertEqual(flat, [_msgpack.packb(i + 0.5) for i in range(100)])
        self.assertIsNone(_vector.unpack_items("bools", b"\x01"))

    def test_a_batch_that_touched_an_object_is_not_packed(self):
        batch = []

        @_registry.task
        def touch(x):
            if x == 40:
                batch[0].before_effect()
            return x

        reports = []
        data, ends = _items(list(range(100)))
        b = _batch.Batch("touch", data, ends, reports.append, True)
        batch.append(b)
        out, out_ends, errors = b.run()
        self.assertIsNone(b.packed)
        flat = [o for r in reports for o in r]
        start = 0
        for end in out_ends:
            flat.append(out[start:end])
            start = end
        self.assertEqual(flat, [_msgpack.packb(i) for i in range(100)])


class FakeHost:
    """A transport that records operations and answers from a script."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.calls = []

    def invoke(self, handle, op, arg, timeout_ms):
        self.calls.append((handle, op, arg, timeout_ms))
        answer = self.answers.pop(0)
        if isinstance(answer, objects.ObjectFault):
            raise answer
        return answer


class Objects(unittest.TestCase):
    def setUp(self):
        self.saved = objects.transport

    def tearDown(self):
        objects.transport = self.saved

    def test_a_handle_decodes_to_the_object_and_encodes_back(self):
        raw = _msgpack.packb([["wasmpool:queue", 3, 99], ["wasmpool:dict", 4, 5], ["x", 1, 2]])
        q, d, other = _msgpack.unpackb(raw)
        self.assertIsInstance(q, objects.Queue)
        self.assertIsInstance(d, objects.Dict)
        self.assertEqual(other, ["x", 1, 2])
        self.assertEqual(_msgpack.packb([q, d, other]), raw)
        self.assertEqual(_msgpack.packb({"q": q}), _msgpack.packb({"q": ["wasmpool:queue", 3, 99]}))

    def test_timeouts_are_seconds_and_errors_are_pythons(self):
        host = FakeHost([objects.ObjectFault("empty"), b"\x07", objects.ObjectFault("full")])
        objects.transport = host
        q = objects.Queue(1, 2)
        with self.assertRaises(queue.Empty):
            q.get(timeout=0.25)
        self.assertEqual(q.get(block=False), 7)
        with self.assertRaises(queue.Full):
            q.put("x", timeout=0.0001)
        self.assertEqual(
            [(c[1], c[3]) for c in host.calls],
            [("queue-get", 250), ("queue-get", 0), ("queue-put", 1)],
        )
        with self.assertRaises(ValueError):
            q.get(timeout=-1)

    def test_pipe_and_barrier_errors(self):
        objects.transport = FakeHost([
            objects.ObjectFault("closed", "end of file: the other end of the pipe is closed"),
            objects.ObjectFault("closed", "broken pipe: the other end is closed"),
            objects.ObjectFault("timeout"),
            objects.ObjectFault("missing", "KeyError: no such key"),
        ])
        c = objects.Connection(1, 1)
        with self.assertRaises(EOFError):
            c.recv()
        with self.assertRaises(BrokenPipeError):
            c.send(1)
        with self.assertRaises(threading.BrokenBarrierError):
            objects.Barrier(2, 2).wait(0.1)
        with self.assertRaises(KeyError) as e:
            del objects.Dict(3, 3)["k"]
        self.assertEqual(e.exception.args, ("k",))


class Hints(unittest.TestCase):
    def setUp(self):
        self.saved = dict(_registry.TASKS)
        _registry.TASKS.clear()

    def tearDown(self):
        _registry.TASKS.clear()
        _registry.TASKS.update(self.saved)

    def test_hints_are_checked_with_the_rust_sdks_wording(self):
        @_registry.task
        def f(x: int, xs: list[int], m: dict[str, int], o: Optional[str], t: tuple[int, str]):
            return [x, xs, m, o, list(t), type(t).__name__]

        ok = _registry.call("f", _msgpack.packb([1, [2], {"a": 3}, None, [4, "s"]]))
        self.assertEqual(_msgpack.unpackb(ok), [1, [2], {"a": 3}, None, [4, "s"], "tuple"])
        cases = [
            ([True, [], {}, None, [1, ""]], "argument 1 (`x: int`): expected int, got a boolean"),
            ([1, [1, "a"], {}, None, [1, ""]],
             "argument 2 (`xs: list[int]`): expected list[int], got an array (item 2: got a string)"),
            ([1, [], {"a": 1.5}, None, [1, ""]],
             "argument 3 (`m: dict[str, int]`): expected dict[str, int], got a map (value of 'a': got a float)"),
            ([1, [], {}, 5, [1, ""]], "argument 4 (`o: Optional[str]`): expected Optional[str], got an integer"),
        ]
        for args, wording in cases:
            with self.assertRaises(_registry.TaskFailure) as e:
                _registry.call("f", _msgpack.packb(args))
            self.assertEqual(e.exception.kind, "bad-args")
            self.assertEqual(e.exception.message, f"task `f`: {wording}")

    def test_a_float_takes_an_int_and_objects_their_class(self):
        @_registry.task
        def g(x: float, q: objects.Queue):
            return x

        self.assertEqual(_registry.call("g", _msgpack.packb([2, ["wasmpool:queue", 1, 1]])), b"\x02")
        with self.assertRaises(_registry.TaskFailure) as e:
            _registry.call("g", _msgpack.packb([2, ["wasmpool:lock", 1, 1]]))
        self.assertIn("expected Queue, got a Lock handle", e.exception.message)


if __name__ == "__main__":
    unittest.main()
