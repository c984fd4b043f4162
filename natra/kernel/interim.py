"""The shared interim program: limit a Pod at once when no verified copy of its own is ready.

Owns: `SharedProgram`, one loaded copy of the shared build
(natra_shared*.bpf.o, the same algorithm) per shape, verified once, and its
slots: sets of a Pod's five maps, made exactly as a Pod's own copy would have
them (the own build loaded without programs) and entered in the copy's maps of
maps ahead of need by `fill_slot`, because entering a map in a map of maps
waits for an RCU grace period (~8 ms here, per map). `bind` writes a Pod's
config into a filled slot's maps and names that slot for the Pod's host veth
ifindex in a plain hash (no grace period): a few ms, no verifier. The name is
also entered in a direct-mapped array in front of the hash (entry ifindex %
4096: ifindex | slot << 32) when that entry is free, because the program
finds a Pod there without a hash lookup (~30 ns of every frame). `unbind`
takes the name out again, found through the shared program's id alone, so a
process other than the one that bound it (the plugin's own, or a restarted
agent) can; the copy that handed the slot out refills it with fresh maps once
it sees the name gone (`reclaim`), and first clears any array entry still
naming the slot, so no entry can lead a frame to a refilled slot.
The shared copy's frames find their Pod by `skb->ifindex`, the device the
hook runs on: the host veth, on both hooks. An ifindex is only unique in one
network namespace: one shared copy serves the host veths of one namespace.
Rule: a bound Pod is what a fresh load gives, except for who runs the code:
the same maps, the same config; once its own copy is verified (bound to the
same maps with `BpfObject.load(reuse=...)`), it takes the shared copy's place
and the name goes. A frame of a device with no slot passes untouched.
Must not know: Pods, CNI, pins, attach.
"""

from __future__ import annotations

import ctypes
import os
import struct
import threading
from collections.abc import Iterable, Sequence

from natra.kernel import bpfsys, libbpf, loader
from natra.kernel import layout as L
from natra.kernel.params import ConfigValues

BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
SLOTS = 256  # NATRA_SHARED_SLOTS in bpf/natra.bpf.c
IF_SLOT_MAP = "natra_if_slot"
IF_CACHE_MAP = "natra_if_cache"
IF_CACHE_ENTRIES = 4096  # NATRA_SHARED_CACHE in bpf/natra.bpf.c
# The shared copy's map of maps for each of a Pod's maps (bpf/natra.bpf.c).
OUTER_NAMES = {name: "natra_slot_" + name.removeprefix("natra_") for name in L.MAP_NAMES}
SHARED_OF = {"natra.bpf.o": "natra_shared.bpf.o", "natra_compat.bpf.o": "natra_shared_compat.bpf.o"}


def shared_path(own_path: str) -> str:
    """The shared build beside an own build (natra.bpf.o -> natra_shared.bpf.o)."""
    base = os.path.basename(own_path)
    if base not in SHARED_OF:
        raise loader.LoadError("object", f"no shared build for {own_path}")
    return os.path.join(os.path.dirname(own_path), SHARED_OF[base])


def _key(ifindex: int) -> bytes:
    return struct.pack("=I", ifindex)


def cache_key(ifindex: int) -> bytes:
    """The direct-mapped array's entry for an ifindex."""
    return _key(ifindex % IF_CACHE_ENTRIES)


def cache_entry(ifindex: int, slot: int) -> bytes:
    """What that entry holds while the Pod of `ifindex` is bound to `slot` (0 when free)."""
    return struct.pack("=Q", ifindex | slot << 32)


FREE_ENTRY = struct.pack("=Q", 0)


def _clear_entry(cache_fd: int, ifindex: int, slot: int | None) -> None:
    """Free the array entry of `ifindex` while it names that ifindex (and `slot`, if given)."""
    held = bpfsys.map_lookup(cache_fd, cache_key(ifindex), 8)
    if held is None or held == FREE_ENTRY:
        return
    value = struct.unpack("=Q", held)[0]
    if value & 0xFFFFFFFF == ifindex and (slot is None or value >> 32 == slot):
        bpfsys.map_update(cache_fd, cache_key(ifindex), FREE_ENTRY)


class SharedProgram:
    """One verified copy of the shared build, serving the Pods of one shape from its slots."""

    def __init__(self, obj: int, own_path: str, configs: Sequence[ConfigValues], flow_table: int,
                 prog_fds: dict[int, int], outer_fds: dict[str, int], if_slot_fd: int, if_cache_fd: int,
                 log_bufs: list):
        self._obj = obj
        self.own_path = own_path  # the own build a slot's maps are made from
        self._configs = list(configs)  # what a fresh slot's maps hold until a Pod's config replaces it
        self.shape = (configs[0].width, configs[0].depth, flow_table)
        self._prog_fds = prog_fds
        self._outer_fds = outer_fds
        self._if_slot_fd = if_slot_fd
        self._if_cache_fd = if_cache_fd
        self._log_bufs = log_bufs
        self._lock = threading.Lock()  # guards the slot lists below
        self._filled: list[tuple[int, loader.BpfObject]] = []  # slots ready to bind, with their maps
        self._bound: dict[int, int] = {}  # slot -> the ifindex it was bound for
        self._unused = list(range(SLOTS - 1, -1, -1))  # slots to fill (never filled, or reclaimed)
        self._filling = 0

    @classmethod
    def load(cls, configs: Sequence[ConfigValues], *, flow_table: int = loader.DEFAULT_FLOW_TABLE,
             path: str | None = None) -> SharedProgram:
        """Verify the shared build for the shape of `configs` and `flow_table`, beside the own
        build `path` (by default the one `BpfObject.load` picks for this kernel). No slot is
        filled yet (`fill_slot`)."""
        templates = loader.BpfObject.load(configs, flow_table=flow_table, path=path, maps_only=True)
        try:
            spath = shared_path(templates.path)
            if not os.path.isfile(spath):
                raise loader.ObjectMissing("object", f"{spath} is not built; run `make bpf`")
            try:
                libbpf.clear_messages()
                obj = libbpf.object_open(spath)
            except libbpf.LibbpfError as e:
                raise loader.LoadError("open", str(e)) from e
            log_bufs: list = []
            try:
                outers = {}
                for name, outer in OUTER_NAMES.items():
                    outers[name] = libbpf.find_map(obj, outer)
                    libbpf.map_set_inner_map_fd(outers[name], templates.map_fd(name))
                progs = {d: libbpf.find_program(obj, n) for d, n in L.PROG_NAMES.items()}
                for prog in progs.values():
                    buf = ctypes.create_string_buffer(loader.VERIFIER_LOG_BYTES)
                    libbpf.program_set_log_buf(prog, buf)
                    log_bufs.append(buf)
                try:
                    libbpf.object_load(obj)
                except libbpf.LibbpfError as e:
                    log = "\n".join(b.value.decode(errors="replace") for b in log_bufs if b.value)
                    raise loader.LoadError("load", str(e), log) from e
                prog_fds = {d: libbpf.program_fd(p) for d, p in progs.items()}
                outer_fds = {name: libbpf.map_fd(m) for name, m in outers.items()}
                if_slot_fd = libbpf.map_fd(libbpf.find_map(obj, IF_SLOT_MAP))
                if_cache_fd = libbpf.map_fd(libbpf.find_map(obj, IF_CACHE_MAP))
            except libbpf.LibbpfError as e:
                libbpf.object_close(obj)
                raise loader.LoadError("shared build", str(e)) from e
            except BaseException:
                libbpf.object_close(obj)
                raise
            return cls(obj, templates.path, configs, flow_table, prog_fds, outer_fds, if_slot_fd, if_cache_fd,
                       log_bufs)
        finally:
            templates.close()

    def serves(self, configs: Sequence[ConfigValues], flow_table: int) -> bool:
        return (configs[0].width, configs[0].depth, flow_table) == self.shape

    def prog_fd(self, direction: int) -> int:
        self._check_open()
        return self._prog_fds[direction]

    def prog_ids(self) -> dict[int, int]:
        return {d: bpfsys.prog_info(fd)["id"] for d, fd in self._prog_fds.items()}

    # ---- slots ----------------------------------------------------------------------------

    def filled(self) -> int:
        """Slots filled or being filled, not yet bound."""
        with self._lock:
            return len(self._filled) + self._filling

    def fillable(self) -> bool:
        """A slot is left to fill, or one is bound that may have been given back."""
        with self._lock:
            return bool(self._unused or self._bound)

    def has_free_slot(self) -> bool:
        with self._lock:
            return bool(self._filled)

    def fill_slot(self) -> bool:
        """Make one slot's maps and enter them (five grace periods, waited side by side);
        False when every slot is filled or bound."""
        self.reclaim()
        with self._lock:
            if self._obj is None or not self._unused:
                return False
            slot = self._unused.pop()
            self._filling += 1
        try:
            maps = loader.BpfObject.load(self._configs, flow_table=self.shape[2], path=self.own_path,
                                         maps_only=True)
        except BaseException:
            with self._lock:
                self._filling -= 1
                self._unused.append(slot)
            raise
        errors: list[BaseException] = []

        def enter(name: str) -> None:
            try:
                bpfsys.map_update(self._outer_fds[name], _key(slot), _key(maps.map_fd(name)))
            except BaseException as e:  # noqa: BLE001 - raised below, in the caller's thread
                errors.append(e)

        threads = [threading.Thread(target=enter, args=(name,)) for name in L.MAP_NAMES]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with self._lock:
            self._filling -= 1
            if errors or self._obj is None:
                self._unused.append(slot)
            else:
                self._filled.append((slot, maps))
                return True
        maps.close()
        if errors:
            raise loader.LoadError("fill a slot of the shared program", str(errors[0]))
        return False

    def bind(self, configs: Sequence[ConfigValues], ifindex: int) -> BoundPod | None:
        """A Pod limited by this copy: a filled slot's maps get its config and its slot is named
        for `ifindex`. None when no slot is filled."""
        self._check_open()
        if not self.serves(configs, self.shape[2]):
            raise loader.LoadError("config", f"sketch {configs[0].width}x{configs[0].depth} asked of a "
                                   f"shared program for {self.shape[0]}x{self.shape[1]}")
        with self._lock:  # reclaim, which also holds it, must not see the slot before its name
            if not self._filled:
                return None
            slot, maps = self._filled.pop()
            self._bound[slot] = ifindex
            try:
                maps.configure(configs)
                bpfsys.map_update(self._if_slot_fd, _key(ifindex), _key(slot))
                held = bpfsys.map_lookup(self._if_cache_fd, cache_key(ifindex), 8)
                if held == FREE_ENTRY:  # else another bound Pod holds it: the hash names this one
                    bpfsys.map_update(self._if_cache_fd, cache_key(ifindex), cache_entry(ifindex, slot))
            except (OSError, loader.LoadError) as e:
                maps.close()  # the slot's entries still hold its maps: reclaim refills it
                raise loader.LoadError("bind to the shared program", str(e)) from e
        return BoundPod(self, maps, ifindex, slot)

    def reclaim(self) -> int:
        """Slots whose Pod is no longer named (moved to its own copy, or deleted) go back to
        be filled with fresh maps; how many."""
        with self._lock:
            if self._obj is None or not self._bound:
                return 0
            named = {}
            for key in bpfsys.map_keys(self._if_slot_fd, 4):
                value = bpfsys.map_lookup(self._if_slot_fd, key, 4)
                if value is not None:
                    named[struct.unpack("=I", value)[0]] = struct.unpack("=I", key)[0]
            gone = [slot for slot, ifindex in self._bound.items() if named.get(slot) != ifindex]
            for slot in gone:
                _clear_entry(self._if_cache_fd, self._bound.pop(slot), slot)
                self._unused.append(slot)
            return len(gone)

    @property
    def closed(self) -> bool:
        return self._obj is None

    def close(self) -> None:
        """Release this process's hold (Pods still on its programs keep them running)."""
        with self._lock:
            filled, self._filled = self._filled, []
            obj, self._obj = self._obj, None
        for _, maps in filled:
            maps.close()
        if obj is not None:
            libbpf.object_close(obj)
            self._prog_fds.clear()
            self._outer_fds.clear()
            self._log_bufs = []

    def _check_open(self) -> None:
        if self._obj is None:
            raise ValueError("shared program already closed")


class BoundPod:
    """A Pod's maps entered in a shared program: what install needs of a loaded object
    (programs, maps, pin, configure, close), the programs being the shared ones."""

    interim = True

    def __init__(self, shared: SharedProgram, maps: loader.BpfObject, ifindex: int, slot: int):
        self._shared = shared
        self._maps = maps
        self.ifindex = ifindex
        self.slot = slot
        self.path = maps.path
        self.shape = maps.shape

    def prog_fd(self, direction: int) -> int:
        return self._shared.prog_fd(direction)

    def prog_ids(self) -> dict[int, int]:
        return self._shared.prog_ids()

    def map_fd(self, name: str) -> int:
        return self._maps.map_fd(name)

    @property
    def map_names(self) -> tuple[str, ...]:
        return self._maps.map_names

    def configure(self, configs: Sequence[ConfigValues]) -> None:
        self._maps.configure(configs)

    def pin_maps(self, directory: str) -> None:
        self._maps.pin_maps(directory)

    @property
    def closed(self) -> bool:
        return self._maps.closed

    def close(self) -> None:
        """Close this process's fds; the slot stays named (the Pod's pins keep its maps)."""
        self._maps.close()

    def __enter__(self) -> BoundPod:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def unbind(prog_ids: Iterable[int], ifindex: int, slot: int | None = None) -> bool:
    """Take `ifindex`'s slot name out of the shared programs `prog_ids` (a program that is
    gone has taken its maps with it), from the hash and from the array in front of it;
    with `slot`, only while it names that slot (the ifindex may since have been given to
    another Pod's veth, bound to another slot). True if a name went from a hash."""
    removed = False
    for prog_id in prog_ids:
        try:
            fd = bpfsys.prog_get_fd_by_id(prog_id)
        except OSError:
            continue
        try:
            if bpfsys.prog_info(fd)["name"] not in L.PROG_NAMES.values():
                continue  # the id was reused by another program
            map_ids = bpfsys.prog_map_ids(fd)
        finally:
            os.close(fd)
        for map_id in map_ids:
            try:
                mfd = bpfsys.map_get_fd_by_id(map_id)
            except OSError:
                continue
            try:
                info = bpfsys.map_info(mfd)
                if info["type"] == BPF_MAP_TYPE_HASH and info["name"] == IF_SLOT_MAP:
                    named = bpfsys.map_lookup(mfd, _key(ifindex), 4)
                    if named is not None and (slot is None or named == _key(slot)):
                        removed = bpfsys.map_delete(mfd, _key(ifindex)) or removed
                elif info["type"] == BPF_MAP_TYPE_ARRAY and info["name"] == IF_CACHE_MAP:
                    _clear_entry(mfd, ifindex, slot)
            finally:
                os.close(mfd)
    return removed
