"""Loaded, verified BPF objects kept ready, so that a Pod's ADD does not wait for the verifier.

Owns: a few `BpfObject`s per shape (object file, sketch width x depth, flow-table
size), loaded ahead of need by `loaders` background threads, and `take`, which
hands one out with the Pod's configs written, or loads one in line when none is
ready. Loading and verifying both programs costs ~90-190 ms of CPU per Pod (by host), and the
verifier runs on the loading thread's CPU, so loaders on separate CPUs verify
side by side; taking a ready object costs a config write. A shape primed with a
depth (the defaults the agent expects most Pods to ask for) keeps that many
ready, counting the ones being loaded; others keep `per_shape`. A take that
finds none ready while a loader is loading that very shape waits for the first
of those objects rather than starting another load beside them.
A taken object is exactly what a fresh load gives: the same ELF, maps created
empty, the config written by the same code (`BpfObject.configure`).
With `shared`, a primed shape also gets a shared interim program
(natra.kernel.interim), loaded first, and `slots` of its slots kept filled:
a take that finds no object ready and names the Pod's host veth (`ifindex`)
is given a Pod bound to that program at once (`interim` counts them) instead
of waiting for the verifier; its own object is loaded later (by the caller).
Rule: only the node agent (a long-lived process) keeps a pool; the plugin's own
process loads in line. An object never leaves the pool half-made: a load that
fails is not kept, and the next take loads in line and reports the error as a
fresh load would. A pooled object holds fds only (nothing pinned), so a killed
agent leaves nothing behind.
Must not know: Pods, CNI, pins, attach.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence

from natra.kernel import interim, loader
from natra.kernel.params import ConfigValues

Shape = tuple[str, int, int, int, int]  # path, file mtime (ns), width, depth, flow table
WAIT_FOR_REFILL_S = 2.0  # a take waits this long at most for the object being loaded


def _file_version(path: str) -> int:
    try:
        st = os.stat(path)
    except OSError:
        return -1
    return st.st_mtime_ns ^ st.st_size ^ st.st_ino


def shape_of(configs: Sequence[ConfigValues], flow_table: int, path: str | None) -> Shape:
    path = path or loader.object_path()
    return (path, _file_version(path), configs[0].width, configs[0].depth, flow_table)


class ObjectPool:
    """`per_shape` ready objects for each of the `shapes` most recently asked shapes,
    loaded by `loaders` threads at a time."""

    def __init__(self, per_shape: int = 2, shapes: int = 4,
                 load: Callable[..., loader.BpfObject] = loader.BpfObject.load, loaders: int = 1,
                 shared: bool = False, slots: int = 8, nice: int = 0,
                 note: Callable[[str], None] | None = None):
        self.per_shape = max(per_shape, 0)
        self.shapes = max(shapes, 1)
        self.loaders = max(loaders, 1)
        self.slots = max(slots, 0) if shared else 0
        self.nice = nice  # the loading threads' niceness: they yield the CPUs to the ADDs
        self._load = load
        self._shared: dict[Shape, interim.SharedProgram | None] = {}  # primed shapes; None: not loaded yet
        self._shared_loading: set[Shape] = set()
        self._shared_since: dict[Shape, float] = {}  # when the shape's shared program began to load
        self.note = note or (lambda message: None)  # says when a shared program is ready
        self._ready: OrderedDict[Shape, list[loader.BpfObject]] = OrderedDict()
        self._templates: dict[Shape, tuple[list[ConfigValues], int, str | None]] = {}
        self._depth: dict[Shape, int] = {}  # primed shapes' own depth
        self._lock = threading.Lock()  # guards _ready, _templates, _depth, _loading
        self._wake = threading.Condition(self._lock)  # the refill threads wait for work
        self._arrived = threading.Condition(self._lock)  # takes wait for an object in the making
        self._loading: Counter[Shape] = Counter()  # objects being loaded by the refill threads
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self.hits = 0
        self.misses = 0
        self.interim = 0  # takes answered with the shared program
        self.failures: list[str] = []  # the last refill errors, newest last

    # ---- the caller's side ---------------------------------------------------------------

    def take(self, configs: Sequence[ConfigValues], *, flow_table: int = loader.DEFAULT_FLOW_TABLE,
             path: str | None = None, ifindex: int | None = None):
        """A loaded object for these configs: a ready one if any, else a Pod bound to the shared
        program (when `ifindex` is given and a slot is filled), else loaded now."""
        shape = shape_of(configs, flow_table, path)
        with self._lock:
            self._remember(shape, configs, flow_table, path)
            shared = self._shared.get(shape) if ifindex is not None else None
            deadline = None
            while not self._ready.get(shape) and self._loading[shape] and not self._stopping:
                if shared is not None and shared.has_free_slot():
                    break
                deadline = deadline or time.monotonic() + WAIT_FOR_REFILL_S
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._arrived.wait(left)
            ready = self._ready.get(shape)
            obj = ready.pop() if ready else None
            self._wake.notify()
        if obj is not None:
            try:
                obj.configure(configs)
            except loader.LoadError:
                obj.close()
                raise
            self.hits += 1
            return obj
        if shared is not None:
            try:
                bound = shared.bind(configs, ifindex)
            except loader.LoadError as exc:  # load in line below, as without a shared program
                bound = None
                with self._lock:
                    self.failures = (self.failures + [f"bind to the shared program: {exc}"])[-5:]
            if bound is not None:
                with self._lock:
                    self.interim += 1
                    self._wake.notify()
                return bound
        self.misses += 1
        return self._load(configs, flow_table=flow_table, path=path)

    def prime(self, configs: Sequence[ConfigValues], *, flow_table: int = loader.DEFAULT_FLOW_TABLE,
              path: str | None = None, depth: int | None = None) -> None:
        """Ask for ready objects of this shape without taking one (the defaults, at start);
        `depth` of them, if given, instead of `per_shape`."""
        shape = shape_of(configs, flow_table, path)
        with self._lock:
            if depth is not None:
                self._depth[shape] = max(depth, 0)
                if self.slots:
                    self._shared.setdefault(shape, None)
            self._remember(shape, configs, flow_table, path)
            self._wake.notify_all()

    def ready_count(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._ready.values())

    # ---- the refill threads --------------------------------------------------------------

    def start(self) -> None:
        if not self._threads and (self.per_shape or self.slots):
            for i in range(self.loaders):
                thread = threading.Thread(target=self._refill_forever, name=f"natra-pool-{i}", daemon=True)
                thread.start()
                self._threads.append(thread)

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._wake.notify_all()
            self._arrived.notify_all()
        for thread in self._threads:
            thread.join(timeout=5)
        with self._lock:
            objects = [o for v in self._ready.values() for o in v]
            self._ready.clear()
            shared = [p for p in self._shared.values() if p is not None]
            self._shared.clear()
        for obj in objects:
            obj.close()
        for program in shared:
            program.close()  # Pods bound to it keep it running through their pins

    def fill_once(self) -> bool:
        """Load one object for the neediest shape; False when every shape is full."""
        with self._lock:
            shape = self._neediest()
            if shape is None:
                return False
            configs, flow_table, path = self._templates[shape]
            self._loading[shape] += 1
        try:
            obj = self._load(configs, flow_table=flow_table, path=path)
        except Exception as exc:  # noqa: BLE001 - the next take loads in line and reports it
            with self._lock:
                self.failures = (self.failures + [f"{shape[2]}x{shape[3]}/{shape[4]}: {exc}"])[-5:]
                self._loading[shape] -= 1
                self._templates.pop(shape, None)  # do not retry a shape that cannot load
                self._ready.pop(shape, None)
                self._depth.pop(shape, None)
                self._arrived.notify_all()
            return True
        with self._lock:
            self._loading[shape] -= 1
            self._arrived.notify_all()
            if shape in self._ready and not self._stopping:
                self._ready[shape].append(obj)
                return True
        obj.close()  # the shape was forgotten meanwhile
        return True

    def shared_once(self) -> bool:
        """Load a primed shape's shared program, or fill one of its slots; False when none needs it."""
        with self._lock:
            work = self._shared_work()
            if work is None:
                return False
            shape, program = work
            if program is None:
                self._shared_loading.add(shape)
                self._shared_since[shape] = time.monotonic()
                configs, flow_table, path = self._templates[shape]
        if program is not None:
            try:
                filled = program.fill_slot()
                with self._lock:
                    since = self._shared_since.pop(shape, None) if program.filled() >= self.slots else None
                if since is not None:
                    self.note(f"shared interim program ready for sketch {shape[2]}x{shape[3]}, flow table "
                              f"{shape[4]}: {self.slots} slots filled, {time.monotonic() - since:.2f} s "
                              "after it began to load")
                return filled
            except loader.LoadError as exc:
                with self._lock:
                    self.failures = (self.failures + [f"shared slot: {exc}"])[-5:]
                    self._shared.pop(shape, None)  # do not retry; takes wait or load as before
                return True
        try:
            program = interim.SharedProgram.load(configs, flow_table=flow_table, path=path)
        except Exception as exc:  # noqa: BLE001 - no shared program: takes wait or load, as before
            with self._lock:
                self.failures = (self.failures + [f"shared program: {exc}"])[-5:]
                self._shared.pop(shape, None)
                self._shared_loading.discard(shape)
            return True
        with self._lock:
            self._shared_loading.discard(shape)
            if shape in self._shared and not self._stopping:
                self._shared[shape] = program
                self._wake.notify_all()
                return True
        program.close()
        return True

    def _refill_forever(self) -> None:
        if self.nice:
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)
            except OSError:
                pass  # not allowed to lower it: load at the agent's priority
        while True:
            with self._lock:
                while not self._stopping and self._neediest() is None and self._shared_work() is None:
                    self._wake.wait()
                if self._stopping:
                    return
                shared_first = self._shared_work() is not None
            if shared_first and self.shared_once():
                continue
            if not self.fill_once():
                with self._lock:  # every slot bound and none given back yet: look again soon
                    self._wake.wait(1.0)

    # ---- bookkeeping (under _lock) -------------------------------------------------------

    def _remember(self, shape: Shape, configs: Sequence[ConfigValues], flow_table: int,
                  path: str | None) -> None:
        if shape not in self._ready:
            self._ready[shape] = []
        self._ready.move_to_end(shape)
        self._templates[shape] = (list(configs), flow_table, path)
        while len(self._ready) > self.shapes:
            old, objects = self._ready.popitem(last=False)
            self._templates.pop(old, None)
            self._depth.pop(old, None)
            for obj in objects:
                obj.close()

    def _shared_work(self) -> tuple[Shape, interim.SharedProgram | None] | None:
        """A primed shape whose shared program is to load (None) or needs a slot filled."""
        if self._stopping:
            return None
        for shape, program in self._shared.items():
            if program is None and shape not in self._shared_loading and shape in self._templates:
                return shape, None
            if program is not None and program.filled() < self.slots and program.fillable():
                return shape, program
        return None

    def _neediest(self) -> Shape | None:
        if self._stopping:
            return None
        for shape in reversed(self._ready):  # the most recently asked first
            wanted = self._depth.get(shape, self.per_shape)
            coming = len(self._ready[shape]) + self._loading[shape]
            if shape in self._templates and coming < wanted:
                return shape
        return None
