"""Running one `call-batch` (the items of a `map` chunk), independent of the component
bindings (so it runs, and is tested, in any Python).

Two ways through a batch, with the same outcomes:

- *Whole batch*: when every item is one number for a one-parameter task (what `map` over a
  range sends), the arguments are decoded at once (:mod:`._vector`), the task is called on
  each in one comprehension, and the results are encoded at once. An exception fails its
  own item and the map goes on from the next one.
- *Item by item*, for everything else, and for the rest of a batch once an item touches a
  shared object.

Through the `batch-packed` export a batch's items may come as one native array of numbers
(``args``: nothing to decode; the item-by-item path gets them encoded again, which only
the rare batch that leaves the first path pays for), and its results may go as one
(:attr:`Batch.packed`, from :func:`._vector.pack_results`: nothing to encode) when the
batch ran wholly on the first path, with no object operation, and every result is of one
kind that packs.

Progress (see `batch-progress` in the WIT world): before an item's first object operation
the items finished so far are reported, and an item that made one is reported as soon as it
finishes, so a later trap never runs it again. On the whole-batch path the running item is
found as the number of results so far, and the map is stopped after it by cutting the list
it iterates; the batch then goes on item by item.
"""

from . import _msgpack, _registry, _vector
from ._registry import TaskFailure


class Batch:
    """One batch's run. ``progress(outcomes)`` hands the host a list of finished outcomes
    (each the encoded result, or a :class:`TaskFailure`)."""

    __slots__ = (
        "name", "data", "ends", "progress", "out", "out_ends", "errors", "effect",
        "whole", "values", "results", "failed", "taken", "cut", "pack", "packed", "args",
        "count",
    )

    def __init__(self, name, data, ends, progress, pack=False, args=None):
        """``args``, instead of ``data`` and ``ends``: the items' one argument each, and
        their one type, ``(values, type)``."""
        self.name = name
        self.data = data
        self.ends = ends
        self.args = args
        self.count = len(args[0]) if args is not None else len(ends)
        self.progress = progress
        # The outcomes not yet reported: results, their ends, `(index, TaskFailure)`.
        self.out = bytearray()
        self.out_ends = []
        self.errors = []
        self.effect = False
        # The whole-batch path: its arguments, results so far, failures by index, how many
        # results have been moved into `out`, and the item after which it stops.
        self.whole = False
        self.values = None
        self.results = None
        self.failed = None
        self.taken = 0
        self.cut = None
        # Whether the results may be answered packed, and then `(kind, payload)`.
        self.pack = pack
        self.packed = None

    def run(self):
        """Runs every item; the outcomes not reported: ``(data, ends, errors)``. When
        :attr:`packed` is set after it, the results are that instead (``data`` and ``ends``
        are empty; ``errors`` index the packed items)."""
        first = 0
        args = self.args
        fast = _registry.whole_batch_caller(self.name)
        if fast is not None:
            func, check = fast
            if args is not None:
                # A copy (of an array: one memory copy): a cut shortens what the map runs
                # over, and the item-by-item path then needs the rest.
                values = check(args[0][:], args[1])
            else:
                values = _vector.decode_single(self.data, self.ends)
                if values is not None:
                    values = check(values)
            if values is not None:
                first = self._run_whole(func, values)
        if first < self.count:
            if args is not None:
                self.data, self.ends = _vector.encode_items(args[0], first)
            self._run_items(first)
        return bytes(self.out), self.out_ends, self.errors

    # ---- progress ----------------------------------------------------------------

    def before_effect(self):
        """Called before each object operation a task makes (see the module's doc)."""
        if self.whole:
            running = len(self.results)
            self._take(running)
            self.report()
            if self.cut is None:
                self.cut = running
                del self.values[running + 1 :]
        else:
            self.report()
            self.effect = True

    def report(self):
        """Hands the outcomes recorded since the last report to the host."""
        if not self.out_ends:
            return
        errors = dict(self.errors)
        done = []
        start = 0
        out = self.out
        for i, end in enumerate(self.out_ends):
            e = errors.get(i)
            done.append(e if e is not None else bytes(out[start:end]))
            start = end
        self.out = bytearray()
        self.out_ends = []
        self.errors = []
        self.progress(done)

    # ---- the whole-batch path -----------------------------------------------------

    def _run_whole(self, func, values):
        """Maps ``func`` over ``values``; the index from which the items are left to the
        item-by-item path (the item after one that touched an object), or all of them."""
        self.values = values
        results = self.results = []
        append = results.append
        failed = self.failed = {}
        items = iter(values)
        # The type of each result, when one comprehension ran every item.
        types = None
        self.whole = True
        try:
            while True:
                try:
                    # A comprehension, not `results.extend(map(func, items))`: it calls
                    # `func` from the eval loop (a Python-to-Python call, no new C-level
                    # frame), ~18% less per item in the guest than `map` (measured side by
                    # side, `x**2`). Each result is appended as it comes, so those before a
                    # failing item are kept, and the map goes on from the item after it
                    # (`items` is one iterator). Its own list holds the results' types
                    # (`append` answers None), which packing needs: a second pass over the
                    # results costs more (the call and the types 216-224 ns an item against
                    # 232-249 with the pass, side by side).
                    types = [type(r) for x in items if not append(r := func(x))]
                    break
                except BaseException as e:  # noqa: BLE001 - SystemExit too is the item's error
                    # `results` holds every result before the failing item's: it is that one.
                    failed[len(results)] = TaskFailure(
                        "failed", _registry.describe(e, _past_this_module(e.__traceback__))
                    )
                    append(None)
                    if self.cut is not None:
                        break
        finally:
            self.whole = False
        done = len(results)
        if self.pack and self.cut is None and done == self.count:
            # Every item ran here and none was reported: perhaps nothing to encode.
            packed = _vector.pack_results(results, failed, None if failed else types)
            if packed is not None:
                self.packed = packed
                self.errors = sorted(failed.items())
                self.values = self.results = self.failed = None
                return done
        self._take(done)
        if self.cut is not None:
            self.report()
        self.values = self.results = self.failed = None
        return done

    def _take(self, upto):
        """Moves the results before ``upto`` not yet moved into the unreported outcomes."""
        start = self.taken
        if upto <= start:
            return
        results = self.results
        for i in sorted(k for k in self.failed if start <= k < upto):
            self._encode(results[start:i])
            self.errors.append((len(self.out_ends), self.failed[i]))
            self.out_ends.append(len(self.out))
            start = i + 1
        self._encode(results[start:upto])
        self.taken = upto

    def _encode(self, values):
        if not values:
            return
        mark = len(self.out)
        count = len(self.out_ends)
        try:
            _vector.encode_into(values, self.out, self.out_ends)
            return
        except BaseException:  # noqa: BLE001 - found again, item by item, below
            del self.out[mark:]
            del self.out_ends[count:]
        for v in values:
            # As the item path fails an item whose result cannot be encoded.
            try:
                self.out += _msgpack.packb(v)
            except _msgpack.EncodeError as e:
                self.errors.append((len(self.out_ends), _registry.encode_failure(self.name, e)))
            except BaseException as e:  # noqa: BLE001 - e.g. a str with a lone surrogate
                self.errors.append((len(self.out_ends), TaskFailure("failed", _registry.describe(e))))
            self.out_ends.append(len(self.out))

    # ---- the item-by-item path ----------------------------------------------------

    def _run_items(self, first):
        run = _registry.batch_caller(self.name)
        data = self.data
        ends = self.ends
        start = ends[first - 1] if first else 0
        for index in range(first, len(ends)):
            end = ends[index]
            self.effect = False
            try:
                # Not `self.out += run(...)`: the item may report (and so replace `out`)
                # while it runs.
                result = run(data, start, end)
                self.out += result
            except TaskFailure as f:
                self.errors.append((len(self.out_ends), f))
            except BaseException as e:  # noqa: BLE001 - an SDK fault must not trap the worker
                self.errors.append((len(self.out_ends), TaskFailure("failed", _registry.describe(e))))
            start = end
            self.out_ends.append(len(self.out))
            if self.effect:
                # An item with side effects is reported as soon as it finishes.
                self.report()


def _past_this_module(tb):
    """The traceback ``tb`` from its first frame outside this module: the task's (a Python
    before 3.12 runs the comprehension in a frame of its own, here too)."""
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return tb
