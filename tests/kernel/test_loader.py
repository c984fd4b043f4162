"""natra/kernel/loader.py on the real kernel: sizes, config, fds, pins, errors.

Root tests: each loads private objects (closed by the load_natra fixture) and
removes every pin it makes, also when it fails.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

from natra.kernel import bpfsys, maps
from natra.kernel import layout as L
from natra.kernel.loader import BpfObject, LoadError, ObjectMissing, object_path
from natra.kernel.params import params_for, to_config

BPF_PROG_TYPE_SCHED_CLS = 3
BPF_MAP_TYPE = {"natra_config": 2, "natra_state": 2, "natra_sketch": 2, "natra_flows": 2,
                "natra_flow_keys": 2, "natra_counters": 6}  # ARRAY, PERCPU_ARRAY
PIN_PREFIX = "nt3l-"


def _configs(width=128, depth=3, from_pod=True):
    p = params_for(50_000_000, width=width, depth=depth)
    return [to_config(p, width=width, depth=depth),
            to_config(p if from_pod else None, width=width, depth=depth)]


def test_object_path_names_the_variants():
    with pytest.raises(ValueError, match="variant"):
        object_path("nonsense")


def test_missing_object_says_how_to_build_it(tmp_path):
    with pytest.raises(ObjectMissing, match="make bpf") as info:
        BpfObject.load(_configs(), path=str(tmp_path / "absent.bpf.o"))
    assert info.value.step == "object"


def test_sketch_shapes_must_agree_between_directions():
    a, b = _configs(width=128)[0], _configs(width=256)[0]
    with pytest.raises(LoadError, match="share one sketch") as info:
        BpfObject.load([a, b])
    assert info.value.step == "config"


@pytest.mark.parametrize("flow_table,why", [(0, "outside"), (1000, "power of two"), (3, "power of two"),
                                            ((1 << 24) + 1, "outside")])
def test_a_flow_table_not_a_power_of_two_is_refused(flow_table, why):
    """A heavy flow's slot is its hash masked by the size: the loader takes powers of two."""
    with pytest.raises(LoadError, match=why) as info:
        BpfObject.load(_configs(), flow_table=flow_table)
    assert info.value.step == "config"


@pytest.mark.root
@pytest.mark.parametrize("width,depth,flow_table", [(128, 3, 1024), (1024, 4, 4096), (1, 1, 1),
                                                     (L.MAX_WIDTH, L.MAX_DEPTH, 65536)])
def test_maps_are_sized_from_the_config(load_natra, width, depth, flow_table):
    obj = load_natra(_configs(width, depth), flow_table=flow_table)
    assert bpfsys.map_info(obj.map_fd("natra_sketch"))["max_entries"] == L.NDIRS * depth * width
    assert bpfsys.map_info(obj.map_fd("natra_flows"))["max_entries"] == flow_table
    assert bpfsys.map_info(obj.map_fd("natra_flow_keys"))["max_entries"] == flow_table
    for name, map_type in BPF_MAP_TYPE.items():
        info = bpfsys.map_info(obj.map_fd(name))
        assert info["type"] == map_type
        assert info["name"] == name


BPF_F_MMAPABLE = 1 << 10


@pytest.mark.root
@pytest.mark.parametrize("variant", ["natra", "natra_compat", "natra_trace"])
def test_flow_slots_each_fill_one_cache_line(load_natra, variant):
    """natra_flows is mmapable for where the kernel puts its values, not for mmap: on a
    page, so each 64-byte slot is one cache line (a plain array's values start 56 bytes
    into a line, and every slot would straddle two: docs/datapath-cost.md)."""
    obj = load_natra(_configs(), variant=variant)
    info = bpfsys.map_info(obj.map_fd("natra_flows"))
    assert info["map_flags"] & BPF_F_MMAPABLE
    assert info["value_size"] == 64 == ctypes.sizeof(L.Flow)


@pytest.mark.root
def test_both_configs_are_written_and_programs_are_sched_cls(load_natra):
    configs = _configs(from_pod=False)
    obj = load_natra(configs)
    for direction, cfg in enumerate(configs):
        assert maps.read_config(obj.map_fd("natra_config"), direction) == cfg
        info = bpfsys.prog_info(obj.prog_fd(direction))
        assert info["type"] == BPF_PROG_TYPE_SCHED_CLS
        assert info["name"] == L.PROG_NAMES[direction]


@pytest.mark.root
def test_one_config_leaves_the_other_direction_unlimited(load_natra):
    obj = load_natra(_configs()[:1])
    other = maps.read_config(obj.map_fd("natra_config"), L.DIR_FROM_POD)
    assert not other.flags & L.CFG_ENABLED
    assert (other.width, other.depth) == (128, 3)


@pytest.mark.root
@pytest.mark.parametrize("variant", ["natra", "natra_trace", "natra_parse"])
def test_every_variant_passes_the_verifier(load_natra, variant):
    obj = load_natra(_configs(), variant=variant)
    assert {obj.prog_fd(d) for d in (L.DIR_TO_POD, L.DIR_FROM_POD)}.isdisjoint({-1})
    assert ("natra_trace" in obj.map_names) == (variant == "natra_trace")


@pytest.mark.root
def test_close_releases_everything_and_is_idempotent(kernel):
    obj = BpfObject.load(_configs())
    prog_id = bpfsys.prog_info(obj.prog_fd(0))["id"]
    with obj:
        pass
    assert obj.closed
    obj.close()
    with pytest.raises(ValueError):
        obj.map_fd("natra_state")
    with pytest.raises(bpfsys.BpfError):  # the program is gone from the kernel
        os.close(bpfsys.prog_get_fd_by_id(prog_id))


@pytest.fixture
def pin_dir(kernel):
    path = f"/sys/fs/bpf/{PIN_PREFIX}{secrets.token_hex(4)}"
    os.mkdir(path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.root
def test_pinned_maps_outlive_the_object_and_read_back(load_natra, pin_dir):
    configs = _configs()
    obj = load_natra(configs)
    obj.pin_maps(pin_dir)
    obj.close()
    assert sorted(os.listdir(pin_dir)) == sorted(L.MAP_NAMES)
    fds = {name: bpfsys.obj_get(os.path.join(pin_dir, name)) for name in L.MAP_NAMES}
    try:
        assert maps.read_config(fds["natra_config"], 0) == configs[0]
        snap = maps.snapshot(fds)
        assert len(snap["sketch"]) == L.NDIRS * 3 * 128
        assert snap["flows"] == {} and snap["counters"] == [[0] * L.NCOUNTERS] * 2
    finally:
        for fd in fds.values():
            os.close(fd)


BAD_PROGRAM = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "natra.h"
char LICENSE[] SEC("license") = "GPL";
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 2); __type(key, __u32);
         __type(value, struct natra_config); } natra_config SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1); __type(key, __u32);
         __type(value, struct natra_cell); } natra_sketch SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1);
         __type(key, __u32); __type(value, struct natra_flow); } natra_flows SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1);
         __type(key, __u32); __type(value, struct natra_flow_key); } natra_flow_keys SEC(".maps");
SEC("tc") int natra_to_pod(struct __sk_buff *skb)
{
	/* reads the packet without a bounds check: the verifier must refuse it */
	return *(__u8 *)(long)skb->data;
}
SEC("tc") int natra_from_pod(struct __sk_buff *skb) { return 0; }
"""


@pytest.mark.root
def test_a_verifier_rejection_carries_the_verifier_log(kernel, tmp_path):
    clang = shutil.which("clang")
    if clang is None:
        pytest.skip("clang is needed to build the deliberately bad object")
    src = tmp_path / "bad.bpf.c"
    src.write_text(BAD_PROGRAM)
    out = tmp_path / "bad.bpf.o"
    include = str(Path(__file__).resolve().parents[2] / "bpf")
    arch = f"/usr/include/{os.uname().machine}-linux-gnu"
    subprocess.run([clang, "-O2", "-g", "-target", "bpf", "-I", include, "-I", arch, "-c", str(src),
                    "-o", str(out)], check=True, capture_output=True)
    with pytest.raises(LoadError) as info:
        BpfObject.load(_configs(), path=str(out))
    assert info.value.step == "load"
    assert "invalid access to packet" in info.value.verifier_log
    assert "verifier log" in str(info.value)


@pytest.mark.root
def test_the_default_object_takes_the_resilient_lock_and_older_kernels_the_compat_one(kernel, monkeypatch):
    """natra.bpf.o (bpf_res_spin_lock) where the kernel is 6.15+, natra_compat.bpf.o
    (bpf_spin_lock) before, and after a failed load of natra.bpf.o."""
    from natra.kernel import loader

    with BpfObject.load(_configs()) as obj:
        new_kernel = loader._kernel_release() >= loader.RES_LOCK_KERNEL
        expected = "natra.bpf.o" if new_kernel else "natra_compat.bpf.o"
        assert obj.path.endswith(expected)
    monkeypatch.setattr(loader, "_kernel_release", lambda: (6, 1))
    with BpfObject.load(_configs()) as obj:
        assert obj.path.endswith("natra_compat.bpf.o")
        assert _passes_one_frame(obj)
    monkeypatch.setattr(loader, "_kernel_release", lambda: (6, 18))
    real = loader.BpfObject._load.__func__

    def failing(cls, configs, flow_table, path, *how):
        if path.endswith("natra.bpf.o"):
            raise LoadError("load", "bpf_res_spin_lock: not found in kernel BTF")
        return real(cls, configs, flow_table, path, *how)

    monkeypatch.setattr(loader.BpfObject, "_load", classmethod(failing))
    with BpfObject.load(_configs()) as obj:
        assert obj.path.endswith("natra_compat.bpf.o")


def _passes_one_frame(obj) -> bool:
    """One IPv4 frame through the direction into the Pod passes (the compat lock works)."""
    from natra.kernel import testrun

    frame = bytes.fromhex("020000000002020000000001" "0800" "4500002e000040004006" "0000"
                          "0a010001" "0a020001" "9c400050") + bytes(26)
    return testrun.run(obj.prog_fd(L.DIR_TO_POD), frame, 0).retval == testrun.TCX_NEXT
