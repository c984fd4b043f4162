"""natra.kernel.pool against the real loader: a pooled object is what a fresh load gives."""

from __future__ import annotations

import netns
import pytest

from natra.kernel import loader, maps, pool
from natra.kernel.params import params_for, to_config

SKIP_REASON = netns.kernel_skip_reason(objects=("natra",))
pytestmark = [pytest.mark.root, pytest.mark.skipif(SKIP_REASON is not None, reason=str(SKIP_REASON))]


def configs(rate: int) -> list:
    return [to_config(params_for(rate, mode="police")), to_config(params_for(rate // 2, mode="police"))]


def test_a_pooled_object_is_indistinguishable_from_a_fresh_load():
    objects = pool.ObjectPool(per_shape=1)
    try:
        objects.prime(configs(1_000_000), flow_table=512)
        assert objects.fill_once() and not objects.fill_once()  # one object, then full
        assert objects.ready_count() == 1
        wanted = configs(40_000_000)
        pooled = objects.take(wanted, flow_table=512)
        assert (objects.hits, objects.misses, objects.ready_count()) == (1, 0, 0)
        with pooled, loader.BpfObject.load(wanted, flow_table=512) as fresh:
            assert maps.snapshot(pooled) == maps.snapshot(fresh)
            assert [maps.read_config(pooled.map_fd("natra_config"), d) for d in (0, 1)] == wanted
    finally:
        objects.stop()


def test_another_shape_misses_and_loads_in_line_then_is_kept_ready():
    objects = pool.ObjectPool(per_shape=1)
    try:
        objects.prime(configs(1_000_000), flow_table=512)
        objects.fill_once()
        other = objects.take(configs(1_000_000), flow_table=1024)  # another flow-table size
        other.close()
        assert (objects.hits, objects.misses) == (0, 1)
        assert objects.fill_once()  # now that shape is wanted too
        assert objects.ready_count() == 2
        objects.take(configs(1_000_000), flow_table=1024).close()
        assert objects.hits == 1
    finally:
        objects.stop()
    assert objects.ready_count() == 0  # stop closes what it kept


def test_a_shape_that_cannot_load_is_reported_by_the_take_not_kept():
    objects = pool.ObjectPool(per_shape=1)
    try:
        with pytest.raises(loader.LoadError):
            objects.take(configs(1_000_000), flow_table=1 << 30)
        assert objects.fill_once()  # tries once in the background, records why, forgets the shape
        assert objects.failures and "outside" in objects.failures[-1]
        assert not objects.fill_once()
    finally:
        objects.stop()


def test_the_refill_thread_fills_and_stops():
    objects = pool.ObjectPool(per_shape=2)
    objects.prime(configs(1_000_000), flow_table=256)
    objects.start()
    try:
        import time

        deadline = time.monotonic() + 20
        while objects.ready_count() < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert objects.ready_count() == 2
    finally:
        objects.stop()
    assert objects.ready_count() == 0


def test_a_primed_shape_keeps_its_own_depth_and_others_keep_per_shape():
    objects = pool.ObjectPool(per_shape=1)
    try:
        objects.prime(configs(1_000_000), flow_table=256, depth=3)
        objects.prime(configs(1_000_000), flow_table=512)
        filled = 0
        while objects.fill_once():
            filled += 1
        assert filled == 4 and objects.ready_count() == 4  # 3 of the primed depth + 1 of the other
    finally:
        objects.stop()


def test_a_take_during_the_load_of_its_shape_gets_that_object_instead_of_loading_another():
    import threading

    release, loading = threading.Event(), threading.Event()
    calls = []

    def held_load(*args, **kwargs):
        """The real loader, held open until the test releases it (the first time only)."""
        calls.append(kwargs)
        obj = loader.BpfObject.load(*args, **kwargs)
        if len(calls) == 1:
            loading.set()
            release.wait(20)
        return obj

    objects = pool.ObjectPool(per_shape=1, load=held_load)
    try:
        objects.prime(configs(1_000_000), flow_table=256)
        refill = threading.Thread(target=objects.fill_once)
        refill.start()
        assert loading.wait(20)
        taken = []
        take = threading.Thread(target=lambda: taken.append(objects.take(configs(2_000_000), flow_table=256)))
        take.start()
        take.join(0.3)
        assert take.is_alive() and not taken  # waiting for the object being loaded
        release.set()
        take.join(20)
        refill.join(20)
        assert len(taken) == 1 and len(calls) == 1  # one load served the take
        assert (objects.hits, objects.misses) == (1, 0)
        assert maps.read_config(taken[0].map_fd("natra_config"), 0) == configs(2_000_000)[0]
        taken[0].close()
    finally:
        release.set()
        objects.stop()


def test_two_loaders_verify_side_by_side_and_a_take_gets_the_first_that_arrives():
    import threading

    inside, release = threading.Barrier(2, timeout=20), threading.Event()
    calls = []

    def overlapping_load(*args, **kwargs):
        """The real loader; the first two calls each held until both are inside one."""
        calls.append(threading.current_thread().name)
        if len(calls) <= 2:
            inside.wait()  # fails (BrokenBarrierError) unless the other load runs meanwhile
        obj = loader.BpfObject.load(*args, **kwargs)
        release.wait(20)
        return obj

    objects = pool.ObjectPool(per_shape=2, load=overlapping_load, loaders=2)
    try:
        objects.prime(configs(1_000_000), flow_table=256)
        objects.start()
        import time

        deadline = time.monotonic() + 20
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sorted(calls) == ["natra-pool-0", "natra-pool-1"]  # one load each, at once
        taken = []
        take = threading.Thread(target=lambda: taken.append(objects.take(configs(2_000_000), flow_table=256)))
        take.start()
        take.join(0.3)
        assert take.is_alive() and not taken  # waiting for the loads under way, not loading a third
        release.set()
        take.join(20)
        assert len(taken) == 1 and (objects.hits, objects.misses) == (1, 0)
        assert not objects.failures  # neither load broke the barrier: they were inside together
        assert maps.read_config(taken[0].map_fd("natra_config"), 0) == configs(2_000_000)[0]
        taken[0].close()
        deadline = time.monotonic() + 20
        while objects.ready_count() < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert objects.ready_count() == 2 and len(calls) == 3  # refilled to its depth, no more
    finally:
        release.set()
        objects.stop()
    assert objects.ready_count() == 0


def test_libbpf_messages_are_kept_per_thread():
    import threading

    from natra.kernel import libbpf

    libbpf.clear_messages()
    failed = []

    def open_a_file_that_is_not_elf():
        libbpf.clear_messages()
        with pytest.raises(libbpf.LibbpfError) as err:
            libbpf.object_open(__file__)
        failed.append((str(err.value), libbpf.recent_messages()))

    other = threading.Thread(target=open_a_file_that_is_not_elf)
    other.start()
    other.join(20)
    (error, theirs), = failed
    assert "elf" in theirs.lower() and theirs.splitlines()[-1] in error  # the failing thread's own report
    assert libbpf.recent_messages() == ""  # nothing of it reached this thread


def test_a_take_that_finds_none_ready_is_bound_to_the_shared_program_when_a_slot_is_filled():
    from natra.kernel import bpfsys, interim

    objects = pool.ObjectPool(per_shape=0, shared=True, slots=1)
    try:
        objects.prime(configs(1_000_000), flow_table=512, depth=0)
        assert objects.shared_once() and objects.shared_once()  # the program, then its slot
        assert not objects.shared_once()  # the one slot is filled
        wanted = configs(40_000_000)
        with objects.take(wanted, flow_table=512, ifindex=7001) as bound:
            assert bound.interim and (objects.hits, objects.misses, objects.interim) == (0, 0, 1)
            with loader.BpfObject.load(wanted, flow_table=512) as fresh:
                assert maps.snapshot(bound) == maps.snapshot(fresh)  # what a fresh load gives
            shared_ids = bound.prog_ids()
        # No slot left: a take without one loads in line, as without a shared program.
        with objects.take(wanted, flow_table=512, ifindex=7002) as loaded:
            assert not getattr(loaded, "interim", False) and objects.misses == 1
        # Another shape has no shared program: it loads.
        with objects.take(configs(1_000_000), flow_table=1024, ifindex=7003) as other:
            assert not getattr(other, "interim", False)
        # Once the first Pod's slot name is gone, the slot is refilled with fresh maps.
        assert interim.unbind(shared_ids.values(), 7001)
        assert objects.shared_once()
        program = [p for p in objects._shared.values() if p is not None][0]
        assert program.has_free_slot() and bpfsys.map_keys(program._if_slot_fd, 4) == []
    finally:
        objects.stop()


def test_a_take_whose_binding_fails_loads_in_line_and_the_slot_is_refilled():
    """The shared program's hash of slot names full (filled here by hand, for real): the
    bind is refused, the take loads the Pod's own object instead."""
    import struct

    from natra.kernel import bpfsys

    objects = pool.ObjectPool(per_shape=0, shared=True, slots=1)
    try:
        objects.prime(configs(1_000_000), flow_table=512, depth=0)
        assert objects.shared_once() and objects.shared_once()
        program = [p for p in objects._shared.values() if p is not None][0]
        for ifindex in range(100_000, 100_000 + 4096):  # NATRA_SHARED_PODS names
            bpfsys.map_update(program._if_slot_fd, struct.pack("=I", ifindex), struct.pack("=I", 255))
        with objects.take(configs(40_000_000), flow_table=512, ifindex=7001) as loaded:
            assert not getattr(loaded, "interim", False)
        assert (objects.interim, objects.misses) == (0, 1)
        assert "bind to the shared program" in objects.failures[-1]
        for ifindex in range(100_000, 100_000 + 4096):
            bpfsys.map_delete(program._if_slot_fd, struct.pack("=I", ifindex))
        assert program.reclaim() == 1 and objects.shared_once() and program.has_free_slot()
    finally:
        objects.stop()


def _frames_counted(bound) -> int:
    from natra.kernel import layout as L

    return maps.read_counters(bound.map_fd("natra_counters"), L.DIR_TO_POD)[L.C_FRAMES]


def test_a_pod_whose_array_entry_another_holds_is_found_through_the_hash():
    """The shared program finds a Pod in a direct-mapped array (entry ifindex % 4096) before its
    hash of slot names. Two Pods whose ifindexes share an entry: the first bound holds it, the
    second is named in the hash only; real frames through BPF_PROG_TEST_RUN (which runs them on
    ifindex 1) reach each Pod's own maps either way. Taking a name out frees the entry, and a
    slot given back frees an entry still naming it before the slot can be refilled."""
    import struct

    from natra.kernel import bpfsys, interim, testrun
    from natra.kernel import layout as L

    eth = bytes.fromhex("020000000002" "020000000001" "0800")
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 46, 0, 0x4000, 64, 6, 0,
                     bytes([10, 1, 0, 1]), bytes([10, 2, 0, 1]))
    frame = eth + ip + struct.pack("!HHIIBBHHH", 40000, 80, 1, 0, 5 << 4, 0x10, 65535, 0, 0) + bytes(6)
    test_run_ifindex, twin = 1, 1 + interim.IF_CACHE_ENTRIES

    def entry(ifindex: int) -> bytes | None:
        return bpfsys.map_lookup(program._if_cache_fd, interim.cache_key(ifindex), 8)

    def run_frames(n: int) -> None:
        for _ in range(n):
            testrun.run(program.prog_fd(L.DIR_TO_POD), frame, now_ns=0)

    program = interim.SharedProgram.load(configs(1_000_000), flow_table=512)
    bound = []
    try:
        # The array is the one bpf/natra.bpf.c declares (NATRA_SHARED_CACHE), as this side sizes it.
        info = bpfsys.map_info(program._if_cache_fd)
        assert (info["name"], info["max_entries"], info["value_size"]) == \
            (interim.IF_CACHE_MAP, interim.IF_CACHE_ENTRIES, 8)
        assert program.fill_slot() and program.fill_slot() and program.fill_slot()
        holder = program.bind(configs(1_000_000), twin)
        bound.append(holder)
        assert entry(twin) == interim.cache_entry(twin, holder.slot)
        run_frames(3)  # ifindex 1: the entry names 4097, the hash names nobody: untouched
        assert _frames_counted(holder) == 0

        other = program.bind(configs(1_000_000), test_run_ifindex)
        bound.append(other)
        assert entry(test_run_ifindex) == interim.cache_entry(twin, holder.slot)  # not taken over
        run_frames(5)  # found through the hash
        assert (_frames_counted(other), _frames_counted(holder)) == (5, 0)

        assert interim.unbind(program.prog_ids().values(), twin, holder.slot)
        assert entry(twin) == interim.FREE_ENTRY
        assert program.reclaim() == 1
        third = program.bind(configs(1_000_000), 1 + 2 * interim.IF_CACHE_ENTRIES)
        bound.append(third)
        assert entry(test_run_ifindex) == interim.cache_entry(1 + 2 * interim.IF_CACHE_ENTRIES, third.slot)
        run_frames(2)
        assert (_frames_counted(other), _frames_counted(third)) == (7, 0)

        # A name taken out of the hash alone (as a process that knows nothing of the array
        # would): the slot's reclaim frees the entry before the slot can be refilled.
        bpfsys.map_delete(program._if_slot_fd, struct.pack("=I", third.ifindex))
        assert program.reclaim() == 1
        assert entry(test_run_ifindex) == interim.FREE_ENTRY
        run_frames(1)
        assert _frames_counted(other) == 8
        assert interim.unbind(program.prog_ids().values(), test_run_ifindex, other.slot)
        run_frames(1)  # no name anywhere: passed untouched
        assert _frames_counted(other) == 8
    finally:
        for b in bound:
            b.close()
        program.close()
