"""Tests of natra/kernel/datapath.py, the facade the CNI plugin calls, on real veths.

Each test gets a private bpffs instance (unmounted afterwards, so even a
failing test leaves no pin) and a throw-away veth. What is attached is read
back from the kernel (BPF_PROG_QUERY, netlink filter dumps, `tc qdisc`), not
only from the pin directory.
"""

from __future__ import annotations

import os
import stat
import time

import netns
import pytest

from natra.kernel import attach, bpfsys, datapath, meta, pins
from natra.kernel import layout as L
from natra.kernel.params import params_for, to_config

SKIP_REASON = netns.kernel_skip_reason()
pytestmark = [pytest.mark.root, pytest.mark.skipif(SKIP_REASON is not None, reason=str(SKIP_REASON))]

MODES = ["tcx", "clsact"]
BOTH = {L.DIR_TO_POD, L.DIR_FROM_POD}
CID = "0123abcd.pod-1_x"
POD_META = {"pod_namespace": "default", "pod_name": "web-1", "pod_uid": "6f1c", "ifname": "eth0"}
PROBE_BUDGET_S = 0.020  # STATUS must be fast: containerd polls it


def configs(to_pod_bps: int | None = 10_000_000, from_pod_bps: int | None = 20_000_000):
    return [to_config(params_for(r) if r else None) for r in (to_pod_bps, from_pod_bps)]


@pytest.fixture
def root():
    with netns.private_bpffs() as mnt:
        yield os.path.join(mnt, "natra")
        # The (empty) root directory may stay, as /sys/fs/bpf/natra does on a node.
        assert set(netns.bpffs_entries(mnt)) <= netns.BPFFS_PRESETS | {"natra"}


@pytest.fixture
def veth():
    with netns.endpoint("d", netns.unique_tag(), quiet=True, address=False) as ep:
        yield ep


def attached_programs(ep: netns.Endpoint) -> dict[str, list[int]]:
    """Every program on the veth's four hooks, as the kernel reports them."""
    idx = ep.host_ifindex
    out = {}
    for d in (L.DIR_TO_POD, L.DIR_FROM_POD):
        out[f"tcx {attach.HOOK_NAME[d]}"] = attach.tcx_prog_ids(idx, d)
        out[f"clsact {attach.HOOK_NAME[d]}"] = [f.prog_id for f in attach.clsact_filters(idx, d)]
    return out


def nothing_attached(ep: netns.Endpoint) -> bool:
    return (not any(attached_programs(ep).values())
            and "clsact" not in netns.run("tc", "qdisc", "show", "dev", ep.host_if))


@pytest.mark.parametrize("mode", MODES)
def test_install_inspect_remove(root, veth, mode):
    cfgs = configs()
    done = datapath.install(CID, veth.host_if, cfgs, directions=BOTH, mode=mode, meta=POD_META, root=root)
    assert done.mode == mode and done.ifindex == veth.host_ifindex and done.directions == (0, 1)
    assert os.path.isdir(done.pin_dir) and "." not in os.path.basename(done.pin_dir)

    progs = attached_programs(veth)
    for d in BOTH:
        ours = attach.pinned_prog_id(pins.pin_dir(CID, root).prog(d))
        assert progs[f"{mode} {attach.HOOK_NAME[d]}"] == [ours]
    other = "clsact" if mode == "tcx" else "tcx"
    assert all(progs[f"{other} {h}"] == [] for h in ("egress", "ingress"))

    seen = datapath.inspect(CID, root=root)
    assert seen.ok, seen.problems
    assert seen.mode == mode and seen.ifindex == veth.host_ifindex and seen.host_ifname == veth.host_if
    assert all(seen.hooks[d].attached for d in BOTH)
    assert seen.configs == {0: cfgs[0], 1: cfgs[1]}
    assert {k: seen.meta[k] for k in POD_META} == POD_META
    assert seen.meta["container_id"] == CID and seen.meta["mode"] == mode
    assert datapath.list_installed(root=root) == [CID]

    datapath.remove(CID, root=root)
    assert nothing_attached(veth)
    assert datapath.inspect(CID, root=root) is None
    assert datapath.list_installed(root=root) == []
    assert os.listdir(root) == []


def test_pins_are_private(root, veth):
    done = datapath.install(CID, veth.host_if, configs(), directions=BOTH, mode="tcx", root=root)
    assert stat.S_IMODE(os.stat(done.pin_dir).st_mode) == pins.DIR_MODE
    names = sorted(os.listdir(done.pin_dir))
    assert names == sorted(["link_to_pod", "link_from_pod", "prog_to_pod", "prog_from_pod", "meta",
                            *L.MAP_NAMES])
    for name in names:
        assert stat.S_IMODE(os.stat(os.path.join(done.pin_dir, name)).st_mode) == pins.PIN_MODE, name
    datapath.remove(CID, root=root)


@pytest.mark.parametrize("mode", MODES)
def test_install_twice_replaces(root, veth, mode):
    datapath.install(CID, veth.host_if, configs(), directions=BOTH, mode=mode, root=root)
    first = attached_programs(veth)
    new_cfgs = configs(30_000_000, None)
    datapath.install(CID, veth.host_if, new_cfgs, directions={L.DIR_TO_POD}, mode=mode, root=root)
    now = attached_programs(veth)
    assert len(now[f"{mode} egress"]) == 1 and now[f"{mode} egress"] != first[f"{mode} egress"]
    assert now[f"{mode} ingress"] == []  # the direction no longer limited is gone
    seen = datapath.inspect(CID, root=root)
    assert seen.ok, seen.problems
    assert seen.configs[L.DIR_TO_POD] == new_cfgs[0]
    links = ["link_to_pod"] if mode == "tcx" else []
    assert sorted(os.listdir(seen.pin_dir)) == sorted([*links, "prog_to_pod", "meta", *L.MAP_NAMES])
    datapath.remove(CID, root=root)
    assert nothing_attached(veth)


def test_switching_mode_on_reinstall_leaves_no_trace_of_the_old_mode(root, veth):
    datapath.install(CID, veth.host_if, configs(), directions=BOTH, mode="clsact", root=root)
    datapath.install(CID, veth.host_if, configs(), directions=BOTH, mode="tcx", root=root)
    progs = attached_programs(veth)
    assert progs["clsact egress"] == progs["clsact ingress"] == []
    assert "clsact" not in netns.run("tc", "qdisc", "show", "dev", veth.host_if)
    assert len(progs["tcx egress"]) == len(progs["tcx ingress"]) == 1
    datapath.remove(CID, root=root)
    assert nothing_attached(veth)


@pytest.mark.parametrize("mode", MODES)
def test_remove_after_the_veth_is_gone(root, mode):
    with netns.endpoint("d", netns.unique_tag(), quiet=True, address=False) as ep:
        datapath.install(CID, ep.host_if, configs(), directions=BOTH, mode=mode, root=root)
    # The netns and the veth are deleted now.
    seen = datapath.inspect(CID, root=root)
    assert not seen.ok and any("is gone" in p for p in seen.problems)
    datapath.remove(CID, root=root)
    datapath.remove(CID, root=root)
    assert datapath.list_installed(root=root) == []


def test_remove_twice_and_remove_unknown(root, veth):
    datapath.remove("never-installed", root=root)
    datapath.install(CID, veth.host_if, configs(), directions=BOTH, root=root)
    datapath.remove(CID, root=root)
    datapath.remove(CID, root=root)
    assert nothing_attached(veth)


@pytest.mark.parametrize("mode", MODES)
def test_inspect_sees_drift(root, veth, mode):
    """Something else took our program off the veth: CHECK must notice."""
    pd = pins.pin_dir(CID, root)
    datapath.install(CID, veth.host_if, configs(), directions=BOTH, mode=mode, root=root)
    if mode == "tcx":
        fd = bpfsys.obj_get(pd.link(L.DIR_TO_POD))
        try:
            bpfsys.link_detach(fd)
        finally:
            os.close(fd)
    else:
        netns.run("tc", "filter", "del", "dev", veth.host_if, "egress", "prio", str(attach.CLSACT_PRIO))
    seen = datapath.inspect(CID, root=root)
    assert not seen.ok
    assert not seen.hooks[L.DIR_TO_POD].attached and seen.hooks[L.DIR_FROM_POD].attached
    assert len(seen.problems) == 1 and seen.problems[0].startswith("to_pod:")
    datapath.remove(CID, root=root)
    assert nothing_attached(veth)


def test_auto_uses_tcx_on_this_kernel(root, veth):
    done = datapath.install(CID, veth.host_if, configs(), directions=BOTH, mode="auto", root=root)
    assert done.mode == "tcx" and done.tcx_error is None
    assert datapath.inspect(CID, root=root).meta["requested_mode"] == "auto"
    datapath.remove(CID, root=root)


def test_list_installed_finds_every_container(root, veth):
    ids = ["c1", "c.2", "c_3"]
    for cid in ids:  # three installs on one veth: clsact prio is shared, so use tcx
        datapath.install(cid, veth.host_if, configs(), directions={L.DIR_TO_POD}, mode="tcx", root=root)
    assert datapath.list_installed(root=root) == sorted(ids)
    assert len(attach.tcx_prog_ids(veth.host_ifindex, L.DIR_TO_POD)) == 3
    for cid in ids:
        datapath.remove(cid, root=root)
    assert datapath.list_installed(root=root) == []
    assert nothing_attached(veth)


def test_failure_before_any_pin_leaves_nothing(root, veth):
    with pytest.raises(datapath.DatapathError) as info:
        datapath.install(CID, "nt3-absent0", configs(), directions=BOTH, root=root)
    assert info.value.step == "find host interface nt3-absent0"
    with pytest.raises(datapath.DatapathError) as info:
        datapath.install(CID, veth.host_if, configs(), directions=BOTH, root=root,
                         object_path="/nonexistent/natra.bpf.o")
    assert info.value.step == "load object" and "does not exist" in str(info.value)
    assert datapath.list_installed(root=root) == []
    assert nothing_attached(veth)


def test_failure_midway_removes_what_was_made(tmp_path, veth):
    """A root that is not bpffs: the directory is made, then pinning fails (EPERM)."""
    root = str(tmp_path / "natra")
    with pytest.raises(datapath.DatapathError) as info:
        datapath.install(CID, veth.host_if, configs(), directions=BOTH, mode="tcx", root=root)
    assert info.value.step == "write meta"
    assert os.listdir(root) == []
    assert nothing_attached(veth)


@pytest.mark.parametrize("bad", [{"directions": set()}, {"directions": {5}}, {"mode": "xdp"}])
def test_bad_arguments_are_refused_before_touching_anything(root, veth, bad):
    args = {"directions": BOTH, "mode": "auto", **bad}
    with pytest.raises(datapath.DatapathError):
        datapath.install(CID, veth.host_if, configs(), root=root, **args)
    assert not os.path.exists(root)


def test_invalid_container_id(root):
    for call in (lambda: datapath.remove("bad/id", root=root), lambda: datapath.inspect("", root=root)):
        with pytest.raises(datapath.DatapathError) as info:
            call()
        assert info.value.step == "container id"


def test_meta_record_survives_in_bpffs(root):
    os.makedirs(root)
    path = os.path.join(root, "meta")
    meta.write(path, {"a": 1})
    meta.write(path, {"a": 2, "b": "x"})  # overwrite in place
    assert meta.read(path) == {"a": 2, "b": "x"}
    assert stat.S_IMODE(os.stat(path).st_mode) == pins.PIN_MODE
    assert meta.read(os.path.join(root, "absent")) is None
    os.unlink(path)
    os.rmdir(root)


def test_probe_is_ready_and_fast(root):
    assert datapath.probe(root=root) == []
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        datapath.probe(root=root)
        times.append(time.perf_counter() - t0)
    assert sorted(times)[len(times) // 2] < PROBE_BUDGET_S


def test_probe_reports_a_missing_bpffs(tmp_path):
    problems = datapath.probe(root=str(tmp_path / "natra"))
    assert len(problems) == 1 and "bpffs is not mounted" in problems[0]


def test_overlong_container_id_is_found_through_its_meta(root, veth):
    cid = "k8s." + "x" * 300  # its encoded name would pass NAME_MAX: the directory is hashed
    done = datapath.install(cid, veth.host_if, configs(), directions={L.DIR_TO_POD}, mode="tcx", root=root)
    assert os.path.basename(done.pin_dir).startswith(pins.HASHED_PREFIX)
    assert datapath.list_installed(root=root) == [cid]
    assert datapath.inspect(cid, root=root).ok
    datapath.remove(cid, root=root)
    assert datapath.list_installed(root=root) == []
    assert nothing_attached(veth)


# ---- an `auto` install answered on clsact, moved to tcx afterwards (the node agent's way) ----

@pytest.fixture
def tcx_later():
    """Stand in for the node agent: keep the moves an `auto` install hands over."""
    moves = []
    datapath.use_tcx_later(lambda container_id, step: moves.append((container_id, step)))
    try:
        yield moves
    finally:
        datapath.use_tcx_later(None)


def our_prog_ids(root: str) -> dict[str, int]:
    pd = pins.pin_dir(CID, root)
    return {attach.HOOK_NAME[d]: attach.pinned_prog_id(pd.prog(d)) for d in BOTH}


def test_auto_with_a_mover_is_on_clsact_at_once_and_on_tcx_after_the_move(root, veth, tcx_later):
    done = datapath.install(CID, veth.host_if, configs(), directions=BOTH, mode="auto", root=root)
    assert done.mode == "clsact" and done.tcx_pending and [c for c, _ in tcx_later] == [CID]
    ours, progs = our_prog_ids(root), attached_programs(veth)
    assert {h: progs[f"clsact {h}"] for h in ours} == {h: [p] for h, p in ours.items()}
    assert progs["tcx egress"] == progs["tcx ingress"] == []
    seen = datapath.inspect(CID, root=root)
    assert seen.ok and seen.mode == "clsact" and seen.meta["tcx_pending"] is True, seen.problems
    assert datapath.pending_moves(root=root) == [CID]

    assert tcx_later[0][1]() == "moved to tcx"
    progs = attached_programs(veth)
    assert {h: progs[f"tcx {h}"] for h in ours} == {h: [p] for h, p in ours.items()}
    assert progs["clsact egress"] == progs["clsact ingress"] == []
    assert "clsact" not in netns.run("tc", "qdisc", "show", "dev", veth.host_if)  # the qdisc we made
    seen = datapath.inspect(CID, root=root)
    assert seen.ok and seen.mode == "tcx" and seen.meta["tcx_pending"] is False, seen.problems
    assert datapath.pending_moves(root=root) == []
    assert tcx_later[0][1]().startswith("nothing to do")
    datapath.remove(CID, root=root)
    assert nothing_attached(veth)


def test_a_move_cut_short_is_finished_and_keeps_the_link_it_made(root, veth, tcx_later):
    datapath.install(CID, veth.host_if, configs(), directions=BOTH, mode="auto", root=root)
    pd = pins.pin_dir(CID, root)
    fd = bpfsys.obj_get(pd.prog(L.DIR_TO_POD))  # the move got as far as one link, then its process died
    try:
        attach.attach_tcx(fd, veth.host_ifindex, L.DIR_TO_POD, pd.link(L.DIR_TO_POD))
    finally:
        os.close(fd)
    first_link = attach.tcx_link(pd.link(L.DIR_TO_POD)).link_id
    assert datapath.inspect(CID, root=root).ok  # the filters still run: CHECK passes meanwhile
    assert datapath.move_to_tcx(CID, root=root) == "moved to tcx"
    assert attach.tcx_link(pd.link(L.DIR_TO_POD)).link_id == first_link
    progs = attached_programs(veth)
    assert len(progs["tcx egress"]) == len(progs["tcx ingress"]) == 1
    assert progs["clsact egress"] == progs["clsact ingress"] == []
    datapath.remove(CID, root=root)
    assert nothing_attached(veth)


@pytest.mark.parametrize("hooks_left", ["filters and a link", "links, record says tcx, filters not yet gone"])
def test_remove_in_the_middle_of_a_move_takes_both_hooks(root, veth, tcx_later, hooks_left):
    datapath.install(CID, veth.host_if, configs(), directions=BOTH, mode="auto", root=root)
    pd = pins.pin_dir(CID, root)
    for d in BOTH if hooks_left.startswith("links") else (L.DIR_FROM_POD,):
        fd = bpfsys.obj_get(pd.prog(d))
        try:
            attach.attach_tcx(fd, veth.host_ifindex, d, pd.link(d))
        finally:
            os.close(fd)
    if hooks_left.startswith("links"):
        meta.write(pd.meta, {**datapath.meta_record(pd), "mode": "tcx"})
        assert datapath.inspect(CID, root=root).ok
    progs = attached_programs(veth)
    assert progs["clsact egress"] and progs["clsact ingress"] and progs["tcx ingress"]
    datapath.remove(CID, root=root)
    assert nothing_attached(veth)
    assert tcx_later[0][1]().startswith("nothing to do")


def test_a_move_whose_tcx_attach_fails_leaves_the_pod_limited_on_clsact(root, veth, tcx_later, monkeypatch):
    """This kernel has tcx, so the refusal is simulated (a mock): the attach raises as a
    kernel without tcx answers (EOPNOTSUPP)."""
    datapath.install(CID, veth.host_if, configs(), directions=BOTH, mode="auto", root=root)

    def refuse(prog_fd, ifindex, direction, link_pin):
        raise attach.AttachError(f"attach tcx {attach.HOOK_NAME[direction]} to ifindex {ifindex}",
                                 OSError(95, "Operation not supported"))

    monkeypatch.setattr(attach, "attach_tcx", refuse)
    said = datapath.move_to_tcx(CID, root=root)
    monkeypatch.undo()
    assert said.startswith("stays on clsact") and "not supported" in said
    seen = datapath.inspect(CID, root=root)
    assert seen.ok and seen.mode == "clsact" and seen.meta["tcx_pending"] is False
    assert "not supported" in seen.meta["tcx_error"] and datapath.pending_moves(root=root) == []
    datapath.remove(CID, root=root)
    assert nothing_attached(veth)


def test_auto_with_a_mover_beside_an_ingress_qdisc_attaches_tcx_at_once(root, veth, tcx_later):
    """clsact cannot share the device with an `ingress` qdisc (the standard plugin's): tcx in line."""
    netns.run("tc", "qdisc", "add", "dev", veth.host_if, "ingress")
    try:
        done = datapath.install(CID, veth.host_if, configs(), directions=BOTH, mode="auto", root=root)
        assert done.mode == "tcx" and not done.tcx_pending and tcx_later == []
        progs = attached_programs(veth)
        assert len(progs["tcx egress"]) == len(progs["tcx ingress"]) == 1
        assert datapath.inspect(CID, root=root).ok
        datapath.remove(CID, root=root)
    finally:
        netns.run("tc", "qdisc", "del", "dev", veth.host_if, "ingress")
    assert nothing_attached(veth)


# ---- the shared interim program -------------------------------------------------------

@pytest.fixture
def shared_pool(tcx_later):
    """Stand in for the node agent with a real pool that has no ready object, only the
    shared interim program with one slot filled: an install is bound to it."""
    from natra.kernel import pool as pool_mod

    objects = pool_mod.ObjectPool(per_shape=0, shared=True, slots=1)
    objects.prime(configs(), flow_table=4096, depth=0)
    assert objects.shared_once() and objects.shared_once()  # the program, then a slot
    datapath.use_object_source(objects.take)
    try:
        yield objects
    finally:
        datapath.use_object_source(None)
        objects.stop()


def shared_program(objects):
    (program,) = [p for p in objects._shared.values() if p is not None]
    return program


def map_ids_pinned(root: str) -> set[int]:
    pd = pins.pin_dir(CID, root)
    ids = set()
    for name in L.MAP_NAMES:
        fd = bpfsys.obj_get(pd.map(name))
        try:
            ids.add(bpfsys.map_info(fd)["id"])
        finally:
            os.close(fd)
    return ids


def prog_map_ids(prog_id: int) -> set[int]:
    fd = bpfsys.prog_get_fd_by_id(prog_id)
    try:
        return set(bpfsys.prog_map_ids(fd))
    finally:
        os.close(fd)


@pytest.mark.parametrize("mode", ["auto", "clsact", "tcx"])
def test_a_pod_bound_to_the_shared_program_gets_its_own_on_the_same_maps(root, veth, shared_pool, tcx_later,
                                                                          mode):
    from natra.kernel import interim

    shared = shared_program(shared_pool)
    shared_ids = shared.prog_ids()
    done = datapath.install(CID, veth.host_if, configs(), directions=BOTH, mode=mode, root=root)
    assert done.interim and shared_pool.interim == 1 and [c for c, _ in tcx_later] == [CID]
    hook = "tcx" if mode == "tcx" else "clsact"
    progs = attached_programs(veth)
    assert {h: progs[f"{hook} {h}"] for h in ("egress", "ingress")} == {
        attach.HOOK_NAME[d]: [shared_ids[d]] for d in BOTH}
    seen = datapath.inspect(CID, root=root)
    assert seen.ok and seen.meta["interim"]["prog_ids"] == {str(d): i for d, i in shared_ids.items()}
    assert datapath.pending_moves(root=root) == [CID]
    pod_maps = map_ids_pinned(root)

    said = tcx_later[0][1]()
    assert said.startswith("own program in place of the shared one"), said
    ours = our_prog_ids(root)
    assert not set(ours.values()) & set(shared_ids.values())
    final = "clsact" if mode == "clsact" else "tcx"
    progs = attached_programs(veth)
    assert {h: progs[f"{final} {h}"] for h in ours} == {h: [p] for h, p in ours.items()}
    other = "tcx" if final == "clsact" else "clsact"
    assert progs[f"{other} egress"] == progs[f"{other} ingress"] == []
    for prog_id in ours.values():  # the own programs run on the maps the shared one used
        assert prog_map_ids(prog_id) == pod_maps
    assert not interim.unbind(shared_ids.values(), veth.host_ifindex)  # the slot name is gone
    assert shared.reclaim() == 1
    seen = datapath.inspect(CID, root=root)
    assert seen.ok and "interim" not in seen.meta and seen.mode == final, seen.problems
    assert datapath.pending_moves(root=root) == []
    datapath.remove(CID, root=root)
    assert nothing_attached(veth)


def test_remove_of_a_pod_still_on_the_shared_program_takes_its_slot_name(root, veth, shared_pool):
    shared = shared_program(shared_pool)
    assert datapath.install(CID, veth.host_if, configs(), directions=BOTH, mode="auto", root=root).interim
    datapath.remove(CID, root=root)
    assert nothing_attached(veth)
    assert shared.reclaim() == 1  # the name went with the Pod: the slot is refilled
    assert shared.fill_slot()


def test_a_swap_cut_short_before_the_slot_name_went_is_finished_by_the_next(root, veth, shared_pool,
                                                                              monkeypatch):
    """The process dying between swapping the programs in and taking the slot name out is
    stood in for by an exception at that step (a mock: the point is exact)."""
    shared = shared_program(shared_pool)
    datapath.install(CID, veth.host_if, configs(), directions=BOTH, mode="clsact", root=root)

    def dies(record):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(datapath, "_unbind", dies)
        with pytest.raises(KeyboardInterrupt):
            datapath.settle(CID, root=root)
    ours = our_prog_ids(root)
    assert datapath.pending_moves(root=root) == [CID]
    assert datapath.settle(CID, root=root) == "own program in place of the shared one"
    assert our_prog_ids(root) == ours  # not loaded a second time
    assert shared.reclaim() == 1
    assert datapath.inspect(CID, root=root).ok
    datapath.remove(CID, root=root)
    assert nothing_attached(veth)


def test_removing_a_pod_leaves_the_slot_name_its_ifindex_now_has_for_another_pod(root, veth, shared_pool):
    """A veth's ifindex can be given again to the veth of a Pod made later (the first Pod's
    veth gone without its DEL, GC removing it afterwards): removing the first Pod must not
    take the name of the second's slot. The second Pod's binding is made directly."""
    import struct

    shared = shared_program(shared_pool)
    datapath.install(CID, veth.host_if, configs(), directions=BOTH, mode="clsact", root=root)
    assert shared.fill_slot()
    second = shared.bind(configs(), veth.host_ifindex)
    try:
        datapath.remove(CID, root=root)
        named = bpfsys.map_lookup(shared._if_slot_fd, struct.pack("=I", veth.host_ifindex), 4)
        assert named == struct.pack("=I", second.slot)
    finally:
        second.close()
